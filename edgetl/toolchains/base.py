"""The toolchain protocol: what a target family supplies to the generic build (:mod:`edgetl.build`).

The build driver owns everything generic — evaluation data, the float reference, the calibration set,
staging, the accuracy and latency check, the budget, the manifest records and build.json. A toolchain
supplies convert / quantize (through its quantizer backend) / save / runner / describe.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SavedArtifact:
    """One file a toolchain wrote, as the manifest records it (``runtime`` marks the runnable one)."""

    name: str
    """File name inside the target's precision folder."""
    record: dict[str, Any] = field(default_factory=dict)
    """Extra fields of its manifest record (runtime, precision, format, device, runner_options)."""


TOOLCHAIN_OPTIONS = ("calibration", "dla_core", "max_batch", "hardware_compatibility", "version_compatible")
"""Build options (:class:`edgetl.build.TargetBuildConfig` fields) that only some toolchains take: each
toolchain lists the ones it honours in ``build_options``."""


class Toolchain(abc.ABC):
    name = ""
    runtime = ""
    """The runtime (:mod:`edgetl.backends` registry name) that runs what this toolchain builds."""
    quantizer = ""
    """Quantizer backend name (:mod:`edgetl.compress.quantize.backend`) for int8."""
    title = ""
    """The target family in messages (``OpenVINO``, ``TensorRT``)."""
    build_options: tuple[str, ...] = ()
    """The toolchain-specific build options (:data:`TOOLCHAIN_OPTIONS`) this toolchain honours."""

    @abc.abstractmethod
    def check(self, precision: str) -> None:
        """Fail with the install hint before any work when a library is missing."""

    def device(self, profile: Any) -> str:
        """The device the build evaluates and times on here (default: the profile's)."""
        return profile.device

    def check_config(self, profile: Any, precision: str, config: Any, others: Iterable[Toolchain] = ()) -> None:
        """Refuse build options this toolchain or device cannot honour, before any work (``others``: the
        toolchains the message may name as taking them)."""
        from ..errors import ConfigError

        given = [k for k in TOOLCHAIN_OPTIONS if k not in self.build_options
                 and getattr(config, k) is not None and getattr(config, k) is not False]
        if given:
            takers = [t.title for t in others if set(given) <= set(t.build_options)]
            flags = [f"--{k.replace('_', '-')}" for k in given]
            raise ConfigError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only to "
                              f"{' / '.join(takers) or 'other'} targets (see `edgetl targets`), not to {profile.name}")

    def runner_options(self, profile: Any, precision: str) -> dict[str, Any]:
        """The runner settings an app should use for this artifact (recorded with it)."""
        return dict(profile.runner_options)

    @abc.abstractmethod
    def convert(self, onnx_path: Path) -> Any:
        """The float model in this toolchain's in-memory form."""

    @abc.abstractmethod
    def runner(self, model_or_path: Any, device: str, options: dict[str, Any]) -> Any:
        """A loaded runner (:class:`edgetl.backends.base.Runner`) for an in-memory model or a saved file."""

    @abc.abstractmethod
    def save(self, model: Any, folder: Path, precision: str) -> list[SavedArtifact]:
        """Write the model into ``folder``; the first entry is the runnable file."""

    def describe(self, runner: Any) -> dict[str, Any]:
        """Metrics on what executed (precision, layers), from the runner of the saved files."""
        info = runner.describe()
        return {"executed_precision": info.precision, "threads": info.threads}

    def layer_precisions(self, runner: Any) -> dict[str, str] | None:
        """Runtime layer -> precision, where the runtime can say (for the reverted-layers report)."""
        return None

    def reports(self, folder: Path, float_model: Any, model: Any, runner: Any, images: Any,
                extra: dict[str, Any], precision: str, sensitivity_images: int) -> dict[str, Any]:
        """Extra report files (e.g. INT8 per-layer sensitivity on the first ``sensitivity_images`` of ``images``,
        the val images); metrics to add to the build's."""
        return {}

    def build_record(self, profile: Any, precision: str, config: Any, folder: Path,
                     saved: list[SavedArtifact]) -> dict[str, Any]:
        """Extra build.json content (TensorRT: the engine settings and trtexec command lines)."""
        return {}
