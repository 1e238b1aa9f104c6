"""Every error edgetl raises on purpose.

The CLI turns any :class:`EdgetlError` into one line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback. Messages say what went wrong *and* what to do next.
"""

from __future__ import annotations


class EdgetlError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""

    exit_code = 1


class DatasetError(EdgetlError):
    """An image folder that cannot be used: missing, empty, mismatched classes, bad images."""


class ModelError(EdgetlError):
    """An unknown backbone, or weights that do not fit the architecture."""


class RunFolderError(EdgetlError):
    """A run folder without the manifest or artifacts a stage needs."""


class IntegrityError(RunFolderError):
    """A run-folder file whose sha256 no longer matches what the stage that wrote it recorded."""


class StaleArtifactError(RunFolderError):
    """An artifact built from inputs that have changed since (e.g. ONNX from an older checkpoint)."""


class RunBusyError(RunFolderError):
    """Another edgetl process is writing the same stage of the same run folder."""


class ConfigError(EdgetlError):
    """An option value that is out of range or inconsistent with another."""


class MissingBackendError(EdgetlError):
    """An optional runtime (OpenVINO, TensorRT, ...) that is not installed, cannot be imported, or is too old."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "", *, found: str | None = None,
                 required: str | None = None, detail: str | None = None) -> None:
        what = f" for {purpose}" if purpose else ""
        hint = self.install_hint(package, extra, required, upgrade=found is not None)
        if found:
            message = f"{package} {found} is installed but edgetl needs {package}>={required}{what}: {hint}"
        elif detail:
            message = f"{package} is installed but cannot be imported{what} ({detail}): {hint}"
        else:
            message = f"{package} is required{what} but is not installed: {hint}"
        super().__init__(message)
        self.package = package
        self.extra = extra
        self.found = found
        self.required = required

    @staticmethod
    def install_hint(package: str, extra: str | None = None, required: str | None = None,
                     upgrade: bool = False) -> str:
        """The pip command that installs ``package`` (through edgetl's ``extra`` when it has one)."""
        flag = "-U " if upgrade else ""
        if extra:
            return f"pip install {flag}'edgetl[{extra}]'"
        return f"pip install {flag}'{package}>={required}'" if required else f"pip install {flag}{package}"


class BundleError(EdgetlError):
    """A bundle that cannot be trusted or read: missing or malformed bundle.json, a newer schema, a file
    whose sha256 differs from bundle.json, an unsafe archive."""


class ParityError(EdgetlError):
    """An exported model whose outputs differ from the PyTorch model beyond tolerance."""


class AccuracyBudgetError(EdgetlError):
    """A compressed model could not be brought within the allowed accuracy drop."""


class TargetError(EdgetlError):
    """An unknown target, or a target the run or the machine cannot serve."""


class RegressionError(EdgetlError):
    """A benchmark comparison found a regression beyond the allowed threshold."""

    exit_code = 3


def did_you_mean(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest names, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not close:
        lowered = name.lower()
        close = [c for c in choices if lowered in c.lower()][:n]
    return f" Did you mean: {', '.join(close)}?" if close else ""
