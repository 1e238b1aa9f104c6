"""The run manifest ``edgetl.json``: what a run folder holds, how each artifact was made, from what.

Schema 2 (this module is the only one that knows it)::

    schema, created, updated, versions      bookkeeping
    model, classes, preprocessing           what every later stage must agree with
    parent                                  null, or {"run": ABS_PATH, "stage": NAME} for a derived run
    dataset                                 {"root": ABS_PATH, "split": "split.json", ...}
    stages.NAME                             status, options, inputs {relpath: sha256}, metrics,
                                            artifacts {relpath: {bytes, sha256 | files, ...}}, error

Schema 1 runs (edgetl 0.1) are read and migrated in memory: they have no ``inputs`` (so nothing
built in them can be proven stale) and no frozen split. Writes go through :meth:`Manifest.save`,
which re-reads the file under the run's lock and merges: a process only replaces the stages and
top-level keys it changed, so two commands working on one run never erase each other's records.
"""

from __future__ import annotations

import copy
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from .._io import read_json, sha256, utc_now, write_json
from ..errors import RunFolderError
from .keys import StageKey, Status, try_parse
from .lock import manifest_lock
from .records import ArtifactRecord, StageRecord
from .safe_paths import inside_name, run_file, run_relative

MANIFEST_NAME = "edgetl.json"
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
COMPLETE, RUNNING, FAILED, INTERRUPTED = Status.COMPLETE, Status.RUNNING, Status.FAILED, Status.INTERRUPTED  # old names
_REQUIRED = {"model": dict, "classes": list, "preprocessing": dict, "stages": dict}


def library_versions(names: tuple[str, ...] = ("torch", "torchvision", "timm", "onnx", "onnxruntime",
                                              "onnxslim", "openvino", "nncf", "numpy")) -> dict[str, str]:
    """Installed versions of the libraries that shape a model's numbers (missing ones are left out)."""
    from importlib import metadata

    versions = {"edgetl": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


@dataclass
class Manifest:
    """In-memory view of ``RUN/edgetl.json``; :meth:`save` merges and writes it atomically under a lock."""

    run_dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    _touched_stages: set[str] = field(default_factory=set, repr=False)
    _touched_keys: set[str] = field(default_factory=set, repr=False)

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    # -- creation and loading -------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, *, model: Mapping[str, Any], classes: list[str],
               preprocessing: Mapping[str, Any], parent: Mapping[str, Any] | None = None) -> Manifest:
        data = {"schema": SCHEMA_VERSION, "created": utc_now(), "versions": library_versions(),
                "model": dict(model), "classes": list(classes), "preprocessing": dict(preprocessing),
                "parent": dict(parent) if parent else None, "stages": {}}
        manifest = cls(Path(run_dir), data)
        manifest._touched_keys.update(data)
        return manifest

    @classmethod
    def load(cls, run_dir: str | Path) -> Manifest:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder not found: {run_dir}" if not run_dir.exists()
                                 else f"{run_dir} is a file, not a run folder")
        return cls(run_dir, _read_checked(run_dir / MANIFEST_NAME))

    def save(self) -> Path:
        """Merge this process's changes into the file on disk (re-read under the run's lock) and write."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with manifest_lock(self.run_dir):
            merged = _read_checked(self.path) if self.path.is_file() else {}
            if not merged:
                merged = dict(self.data)
            for key in self._touched_keys:
                merged[key] = self.data[key]
            merged.setdefault("stages", {})
            for name in self._touched_stages:
                if name in self.stages:
                    merged["stages"][name] = self.stages[name]
                else:
                    merged["stages"].pop(name, None)
            merged["schema"] = SCHEMA_VERSION
            merged["updated"] = utc_now()
            write_json(self.path, merged)
            self.data = merged
        return self.path

    def set(self, key: str, value: Any) -> None:
        """Set a top-level entry (``dataset``, ``parent``, ...); written on the next save."""
        self.data[key] = value
        self._touched_keys.add(key)

    # -- convenient views -----------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.data["preprocessing"]

    @property
    def parent(self) -> dict[str, Any] | None:
        return self.data.get("parent")

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data["stages"]

    def stage(self, name: str | StageKey) -> dict[str, Any] | None:
        """The stage's record as the JSON holds it (the live dict); :meth:`record` for a typed copy."""
        return self.stages.get(str(name))

    def record(self, name: str | StageKey) -> StageRecord | None:
        """The stage's record, typed (a copy: changes go through :func:`edgetl.run.stage.stage`)."""
        stage = self.stages.get(str(name))
        return None if stage is None else StageRecord.from_dict(copy.deepcopy(stage))

    def completed(self, name: str | StageKey) -> bool:
        stage = self.stage(name)
        return bool(stage and stage.get("status") == Status.COMPLETE)

    def keys(self) -> list[StageKey]:
        """The stages recorded, as keys (names no edgetl version writes are left out)."""
        return [key for name in self.stages if (key := try_parse(name)) is not None]

    def require(self, name: str | StageKey, hint: str) -> dict[str, Any]:
        """The completed stage ``name`` or a :class:`RunFolderError` saying how to produce it."""
        stage = self.stage(name)
        if not stage or stage.get("status") != Status.COMPLETE:
            state = stage.get("status") if stage else "missing"
            raise RunFolderError(f"stage '{name}' of {self.run_dir} is {state}: {hint}")
        return stage

    # -- stage bookkeeping (use edgetl.run.stage.stage() rather than calling these directly) ------
    def begin(self, name: str | StageKey, options: Mapping[str, Any], inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Mark a stage as running (and save), dropping any earlier record of it."""
        name = str(name)
        self.stages[name] = {"status": str(Status.RUNNING), "started": utc_now(), "pid": os.getpid(),
                             "options": plain(options), "inputs": dict(inputs or {}), "metrics": {}, "artifacts": {}}
        self._touched_stages.add(name)
        self.save()
        return self.stages[name]

    def reopen(self, name: str | StageKey, options_update: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Mark an existing stage running again (resume), keeping its artifacts and history."""
        name = str(name)
        stage = self.stages[name]
        stage.update(status=str(Status.RUNNING), pid=os.getpid(), resumed=utc_now())
        stage.pop("error", None)
        stage["options"].update(plain(options_update or {}))
        self._touched_stages.add(name)
        self.save()
        return stage

    def add_artifact(self, name: str | StageKey, path: str | Path, **extra: Any) -> ArtifactRecord:
        """Record ``path`` (inside the run folder) under stage ``name`` with its size and sha256, plus the
        descriptive fields of :class:`~.records.ArtifactRecord` in ``extra`` (an unknown name is refused)."""
        name, path = str(name), Path(path)
        rel = run_relative(self.run_dir, path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        entry: dict[str, Any] = {"bytes": sum(p.stat().st_size for p in files)}
        if path.is_file():
            entry["sha256"] = sha256(path)
        else:
            entry["files"] = {p.relative_to(path).as_posix(): sha256(p) for p in files}
        entry.update(plain(ArtifactRecord.describing(**extra)))
        self.stages[name]["artifacts"][rel] = entry
        self._touched_stages.add(name)
        return ArtifactRecord.from_dict(entry)

    def finish(self, name: str | StageKey, metrics: Mapping[str, Any] | None = None,
               status: Status = Status.COMPLETE) -> None:
        name = str(name)
        stage = self.stages[name]
        if metrics:
            stage["metrics"].update(plain(metrics))
        stage["status"] = str(status)
        stage["finished"] = utc_now()
        self._touched_stages.add(name)
        self.save()

    def fail(self, name: str | StageKey, error: str, status: Status = Status.FAILED) -> None:
        name = str(name)
        if name in self.stages:
            self.stages[name]["error"] = error
            self.finish(name, status=status)

    # -- what is recorded where ------------------------------------------------------------
    def producer(self, rel: str) -> tuple[str, ArtifactRecord, str] | None:
        """(stage, artifact record, file inside it or '') of the stage that recorded ``rel``."""
        for stage_name, stage in self.stages.items():
            for art, entry in stage.get("artifacts", {}).items():
                if art == rel:
                    return stage_name, ArtifactRecord.from_dict(entry), ""
                if "files" in entry and rel.startswith(art + "/") and rel[len(art) + 1:] in entry["files"]:
                    return stage_name, ArtifactRecord.from_dict(entry), rel[len(art) + 1:]
        return None

    def recorded_sha256(self, rel: str) -> str | None:
        found = self.producer(rel)
        return None if found is None else found[1].digest(found[2])

    def recorded_files(self, stage_name: str | StageKey) -> dict[str, str]:
        """Every file a stage recorded, run-relative, with its sha256."""
        out = {}
        for art, record in StageRecord.from_dict(self.stages[str(stage_name)]).artifacts.items():
            if record.sha256 is not None:
                out[art] = record.sha256
            for sub, digest in (record.files or {}).items():
                out[f"{art}/{sub}"] = digest
        return out

    def verify(self) -> list[str]:
        """Artifacts whose files are missing or whose checksum changed since they were recorded."""
        problems = []
        for stage_name in self.stages:
            for rel, digest in self.recorded_files(stage_name).items():
                try:
                    file = run_file(self.run_dir, rel)
                except RunFolderError as exc:
                    problems.append(f"{stage_name}: {exc}")
                    continue
                if not file.is_file():
                    problems.append(f"{stage_name}: {file} is missing")
                elif sha256(file) != digest:
                    problems.append(f"{stage_name}: {file} changed since it was recorded")
        return problems


# -- reading and checking the file ---------------------------------------------------------------

def _read_checked(path: Path) -> dict[str, Any]:
    run_dir = path.parent
    data = read_json(path, RunFolderError,
                     f"{run_dir} has no {MANIFEST_NAME}: is it a run folder made by `edgetl finetune`?",
                     "the run folder is damaged")
    damaged = f"{path} is damaged:"
    if not isinstance(data, dict):
        raise RunFolderError(f"{damaged} it holds a JSON {type(data).__name__}, not an object")
    schema = data.get("schema")
    if schema not in READABLE_SCHEMAS:
        newer = isinstance(schema, int) and schema > SCHEMA_VERSION
        raise RunFolderError(f"{path} has manifest schema {schema!r}; this edgetl reads {list(READABLE_SCHEMAS)}"
                             + ("; upgrade edgetl" if newer else ""))
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            state = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise RunFolderError(f"{damaged} '{key}' is {state}, expected a JSON {'object' if kind is dict else 'list'}")
    data.setdefault("parent", None)
    for name, stage in data["stages"].items():
        if not isinstance(stage, dict) or not all(isinstance(stage.get(k, {}), dict) for k in ("artifacts", "inputs")):
            raise RunFolderError(f"{damaged} stage '{name}' is not a stage record")
        stage.setdefault("inputs", {})
        for key in ("artifacts", "inputs"):
            if key in stage:
                stage[key] = {_check_inside(rel, path, name): value for rel, value in stage[key].items()}
    return data


def _check_inside(rel: str, path: Path, stage: str) -> str:
    """A recorded path, run-relative (an absolute one inside the run folder is made relative), or refused."""
    given = rel
    if PurePosixPath(rel).is_absolute():  # both sides made absolute (and resolved) before comparing
        rel = inside_name(path.parent, rel) or rel
    parts = PurePosixPath(rel).parts
    if (rel in ("", ".") or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel
            or ":" in (parts[0] if parts else "")):
        raise RunFolderError(f"{path}: stage '{stage}' records {given!r}, a path outside the run folder; "
                             "edgetl only reads artifacts inside the run")
    return rel


def plain(value: Any) -> Any:
    """Options and metrics as JSON-ready values (paths to strings, tuples to lists)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (Path, Enum)):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
