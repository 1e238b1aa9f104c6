"""Where a command may write an output outside a run's own stages: the one rule every ``--output`` follows.

An output goes to a new path (or an empty folder), or replaces what edgetl itself wrote there, recognised
by its own marker (a bundle's ``bundle.json``, a bench folder's ``report.json``, a study's ``tune.json``, an
engine's fingerprint). Anything else is refused in one line, ``--overwrite`` included; an explicit
``--output`` replaces edgetl's own output only with ``--overwrite`` (the default place, as a rerun of the
same command, without it). Nothing is written inside the dataset, nor over it. :func:`claim_output` checks
this before any work is done.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .run.keys import FINETUNE

_MARKER_CAP = 16 * 2**20
"""Largest marker file (bundle.json, report.json, ...) read to recognise an output."""
_ARCHIVE_MEMBERS_CAP = 1000
"""Archive members read while looking for a bundle's bundle.json (it comes third in edgetl's archives)."""
BUNDLE_KEYS = ("schema", "task", "edgetl_version", "files")


@dataclass(frozen=True)
class OutputKind:
    """One kind of output: what it is called, whether it is a folder, and how edgetl recognises its own."""

    what: str
    folder: bool
    recognise: Callable[[Path], bool]
    """Whether the existing ``path`` is edgetl's own output of this kind."""
    companions: Callable[[Path], list[Path]] = lambda path: []
    """Files written beside ``path`` (an engine's fingerprint and layer report): claimed with it."""
    reuse: bool = False
    """edgetl's own output is continued, not replaced (a study resumes): no ``--overwrite`` needed."""


def claim_output(path: str | Path, kind: OutputKind, *, overwrite: bool = False, explicit: bool = True,
                 data_roots: Iterable[str | Path] = (), option: str = "--output") -> Path:
    """The resolved ``path`` when ``kind`` may be written there, else a one-line :class:`ConfigError`.

    ``explicit``: the user named the path (else it is the command's default place, which a rerun of the
    same command replaces without ``overwrite``). ``data_roots``: the dataset folders the output must stay
    out of. Nothing is created or changed here."""
    from .run.newrun import check_outside_data

    given = Path(path)
    shown = f"{option} {given}"
    for candidate in (given, *kind.companions(given)):
        if candidate.is_symlink():
            raise ConfigError(f"{option} {candidate} is a symbolic link: edgetl does not write through links; "
                              "choose a plain path")
    out = given.resolve()
    check_outside_data(out, [Path(r).resolve() for r in data_roots], shown)
    _check_parent(out, shown)
    if kind.folder and out.is_file():
        raise ConfigError(f"{shown} is a file, not a folder ({kind.what}): choose a new folder")
    if not kind.folder and out.is_dir():
        raise ConfigError(f"{shown} is a folder: give the {kind.what} a file name (a new path)")
    present = [p for p in (out, *kind.companions(out)) if p.exists()]
    if not present or (kind.folder and out.is_dir() and not any(out.iterdir())):
        return out
    if not kind.recognise(out):
        found = present[0] if present[0] != out else given
        raise ConfigError(f"{found} exists and is not an edgetl {kind.what}: edgetl only replaces what it wrote "
                          f"itself, even with --overwrite; choose a new {option} path")
    if explicit and not overwrite and not kind.reuse:
        raise ConfigError(f"{given} already holds an edgetl {kind.what}: pass --overwrite to replace it, or choose "
                          f"a new {option} path")
    return out


def _check_parent(out: Path, shown: str) -> None:
    """The nearest existing parent of ``out`` must be a folder (else the write fails half-way)."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{shown}: {parent} is a file, not a folder; choose a path in a folder")
            return


def run_data_roots(manifest: Any) -> list[Path]:
    """The dataset folders a run was trained and validated on (its dataset record and finetune options)."""
    record = manifest.data.get("dataset") or {}
    trained = manifest.record(FINETUNE)
    options = trained.options if trained else {}
    roots = [record.get("root"), options.get("data"), options.get("val")]
    return list(dict.fromkeys(Path(r).resolve() for r in roots if isinstance(r, str) and r))


# -- recognising edgetl's own outputs ---------------------------------------------------------------
def _json_file(path: Path) -> Any:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _MARKER_CAP:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_bundle_meta(meta: Any) -> bool:
    return isinstance(meta, dict) and all(k in meta for k in BUNDLE_KEYS) and isinstance(meta["files"], dict)


def is_bundle_folder(path: Path) -> bool:
    return path.is_dir() and _is_bundle_meta(_json_file(path / "bundle.json"))


def is_bundle_archive(path: Path) -> bool:
    """A tar archive whose ``NAME/bundle.json`` (or ``bundle.json``) member is an edgetl bundle.json."""
    import tarfile

    if not path.is_file():
        return False
    try:
        with tarfile.open(path, "r:*") as tar:
            for _ in range(_ARCHIVE_MEMBERS_CAP):
                member = tar.next()
                if member is None:
                    return False
                if re.fullmatch(r"(?:[^/]+/)?bundle\.json", member.name) and member.isfile():
                    if member.size > _MARKER_CAP:
                        return False
                    handle = tar.extractfile(member)
                    return handle is not None and _is_bundle_meta(json.loads(handle.read().decode("utf-8")))
    except (OSError, EOFError, ValueError, tarfile.TarError):
        return False
    return False


def is_bench_folder(path: Path) -> bool:
    data = _json_file(path / "report.json")
    return isinstance(data, dict) and data.get("kind") == "edgetl.bench"


def is_bench_report(path: Path) -> bool:
    data = _json_file(path)
    return isinstance(data, dict) and data.get("kind") == "edgetl.bench"


STUDY_CONFIG = "tune.json"
"""A study folder's marker: its TuneConfig, saved by :func:`edgetl.tune.tune` (defined here, not in the
``tune`` package, so that this module imports no stage)."""


def is_study_folder(path: Path) -> bool:
    data = _json_file(path / STUDY_CONFIG)
    return isinstance(data, dict) and all(k in data for k in ("data", "trials", "storage"))


def engine_companions(engine: Path) -> list[Path]:
    from .backends.tensorrt import sidecar_path
    from .toolchains.tensorrt_fingerprint import layers_name

    return [sidecar_path(engine), engine.with_name(layers_name(engine.name))]


def is_engine(engine: Path) -> bool:
    """An engine with its fingerprint: the sidecar names this engine and the plan's sha256 matches it."""
    from ._io import sha256

    sidecar = _json_file(engine_companions(engine)[0])
    if not isinstance(sidecar, dict) or sidecar.get("engine") != engine.name or not engine.is_file():
        return False
    return sidecar.get("engine_sha256") == sha256(engine)


BUNDLE_ARCHIVE = OutputKind("bundle archive", folder=False, recognise=is_bundle_archive)
BUNDLE_FOLDER = OutputKind("bundle folder", folder=True, recognise=is_bundle_folder)
BENCH_FOLDER = OutputKind("bench report folder (report.json)", folder=True, recognise=is_bench_folder)
BENCH_REPORT = OutputKind("bench report (report.json)", folder=False, recognise=is_bench_report)
STUDY_FOLDER = OutputKind("tune study folder (tune.json)", folder=True, recognise=is_study_folder, reuse=True)
ENGINE = OutputKind("TensorRT engine (with its fingerprint .engine.json)", folder=False, recognise=is_engine,
                    companions=engine_companions)
