"""The run manifest ``edgetl.json``: what a run folder holds and how each artifact was made.

Every stage (finetune, onnx export, a target build, bench) is recorded under ``stages`` with its
options, metrics, status and the sha256 of each file it wrote. A stage is ``running`` until it
finishes, so a killed process never leaves a manifest that claims success.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from ._io import read_json, sha256, utc_now, write_json
from .errors import RunFolderError

MANIFEST_NAME = "edgetl.json"
SCHEMA_VERSION = 1


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


@dataclass
class Manifest:
    """In-memory view of ``RUN/edgetl.json``; :meth:`save` writes it atomically."""

    run_dir: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    # -- creation and loading -------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, *, model: Mapping[str, Any], classes: list[str],
               preprocessing: Mapping[str, Any]) -> Manifest:
        run_dir = Path(run_dir)
        data = {
            "schema": SCHEMA_VERSION,
            "created": utc_now(),
            "versions": library_versions(),
            "model": dict(model),
            "classes": list(classes),
            "preprocessing": dict(preprocessing),
            "stages": {},
        }
        return cls(run_dir, data)

    @classmethod
    def load(cls, run_dir: str | Path) -> Manifest:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder not found: {run_dir}")
        path = run_dir / MANIFEST_NAME
        data = read_json(path, RunFolderError,
                         f"{run_dir} has no {MANIFEST_NAME}: is it a run folder made by `edgetl finetune`?",
                         "the run folder is damaged")
        if data.get("schema") != SCHEMA_VERSION:
            raise RunFolderError(f"{path} has manifest schema {data.get('schema')!r}; this edgetl reads {SCHEMA_VERSION}")
        return cls(run_dir, data)

    def save(self) -> Path:
        self.data["updated"] = utc_now()
        return write_json(self.path, self.data)

    # -- convenient views -----------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data["stages"]

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.stages.get(name)

    def completed(self, name: str) -> bool:
        stage = self.stage(name)
        return bool(stage and stage.get("status") == "complete")

    def require(self, name: str, hint: str) -> dict[str, Any]:
        """The completed stage ``name`` or a :class:`RunFolderError` saying how to produce it."""
        stage = self.stage(name)
        if not stage or stage.get("status") != "complete":
            state = stage.get("status") if stage else "missing"
            raise RunFolderError(f"stage '{name}' of {self.run_dir} is {state}: {hint}")
        return stage

    # -- stage bookkeeping ----------------------------------------------------------------
    def begin(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Mark a stage as running (and save), dropping any earlier record of it."""
        self.stages[name] = {"status": "running", "started": utc_now(), "options": _plain(options),
                             "metrics": {}, "artifacts": {}}
        self.save()
        return self.stages[name]

    def add_artifact(self, name: str, path: str | Path, **extra: Any) -> dict[str, Any]:
        """Record ``path`` (inside the run folder) under stage ``name`` with its size and sha256."""
        path = Path(path)
        rel = path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        entry: dict[str, Any] = {"bytes": sum(p.stat().st_size for p in files)}
        if path.is_file():
            entry["sha256"] = sha256(path)
        else:
            entry["files"] = {p.relative_to(path).as_posix(): sha256(p) for p in files}
        entry.update(extra)
        self.stages[name]["artifacts"][rel] = entry
        return entry

    def finish(self, name: str, metrics: Mapping[str, Any] | None = None, status: str = "complete") -> None:
        stage = self.stages[name]
        if metrics:
            stage["metrics"].update(_plain(metrics))
        stage["status"] = status
        stage["finished"] = utc_now()
        self.save()

    def fail(self, name: str, error: str) -> None:
        if name in self.stages:
            self.stages[name]["error"] = error
            self.finish(name, status="failed")

    def verify(self) -> list[str]:
        """Artifacts whose files are missing or whose checksum changed since they were recorded."""
        problems = []
        for stage_name, stage in self.stages.items():
            for rel, entry in stage.get("artifacts", {}).items():
                path = self.run_dir / rel
                recorded = {"": entry["sha256"]} if "sha256" in entry else entry.get("files", {})
                for sub, digest in recorded.items():
                    file = path / sub if sub else path
                    if not file.is_file():
                        problems.append(f"{stage_name}: {file} is missing")
                    elif sha256(file) != digest:
                        problems.append(f"{stage_name}: {file} changed since it was recorded")
        return problems


def _plain(value: Any) -> Any:
    """Options and metrics as JSON-ready values (paths to strings, tuples to lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
