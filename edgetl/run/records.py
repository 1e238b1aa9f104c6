"""Typed views of what ``edgetl.json`` records: a stage (:class:`StageRecord`) and its artifacts
(:class:`ArtifactRecord`).

The JSON on disk does not change: ``from_dict(d).to_dict() == d`` for every record any edgetl version
wrote (fields this version does not name, and explicit nulls, ride along in ``extra``). Writing is strict:
:meth:`ArtifactRecord.describing` refuses a field name it does not know, so a typo in a writer is an error
at once, not a silent ``None`` for every reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .keys import Status


@dataclass(frozen=True)
class ArtifactRecord:
    """One file or folder a stage wrote: ``stages.NAME.artifacts.RELPATH``."""

    bytes: int
    sha256: str | None = None
    """The file's sha256 (a file artifact)."""
    files: dict[str, str] | None = None
    """``{path inside the folder: sha256}`` (a folder artifact)."""
    runtime: str | None = None
    """The runtime that runs it here (``torch``, ``onnxruntime``, ``openvino``, ``tensorrt``): a model."""
    precision: str | None = None
    format: str | None = None
    device: str | None = None
    runner_options: dict[str, Any] | None = None
    deploy_runtime: str | None = None
    """The runtime it is meant for on the device, when that differs from ``runtime`` (a Q/DQ ONNX)."""
    executed_precision: str | None = None
    tensorrt_version: str | None = None
    onnxruntime_options: dict[str, Any] | None = None
    """The ONNX Runtime session options it needs to run here (the FP16 Q/DQ graph)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields this edgetl does not name, and explicit nulls, kept for the round trip."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactRecord:
        known = _names(cls)
        values = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**values, extra={k: v for k, v in data.items() if k not in values})

    @classmethod
    def describing(cls, **fields_: Any) -> dict[str, Any]:
        """The descriptive fields a writer adds (``runtime=...``), checked by name; bytes and digests come
        from the file itself (:meth:`edgetl.run.manifest.Manifest.add_artifact`)."""
        unknown = sorted(set(fields_) - (_names(cls) - _FROM_THE_FILE))
        if unknown:
            raise TypeError(f"an artifact record has no writable field {', '.join(unknown)}")
        return dict(fields_)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        return {**out, **self.extra}

    def digest(self, inside: str = "") -> str | None:
        """The recorded sha256 of the file itself, or of ``inside`` (a folder artifact's member)."""
        return (self.files or {}).get(inside) if inside else self.sha256

    @property
    def runnable(self) -> bool:
        """A model some runtime loads (bench and package consider only these)."""
        return self.runtime is not None


@dataclass(frozen=True)
class StageRecord:
    """One stage of a run: ``stages.NAME``."""

    status: Status | str
    """A :class:`Status`; an unknown word (a newer edgetl's) stays a string."""
    options: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    """Run-relative input files with the sha256 the stage read."""
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    resumed: str | None = None
    pid: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Other entries (a training's ``history``), and explicit nulls, kept for the round trip."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        known = _names(cls)
        values = {k: v for k, v in data.items() if k in known and v is not None}
        status = values.get("status", "")
        values["status"] = Status(status) if status in Status.values() else status
        values["artifacts"] = {rel: ArtifactRecord.from_dict(a) for rel, a in values.get("artifacts", {}).items()}
        return cls(**values, extra={k: v for k, v in data.items() if k not in values})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            out[f.name] = ({rel: a.to_dict() for rel, a in value.items()} if f.name == "artifacts"
                           else str(value) if f.name == "status" else value)
        return {**out, **self.extra}

    @property
    def complete(self) -> bool:
        return self.status == Status.COMPLETE

    def models(self) -> dict[str, ArtifactRecord]:
        """The artifacts a runtime loads, by run-relative path."""
        return {rel: a for rel, a in self.artifacts.items() if a.runnable}


_FROM_THE_FILE = frozenset({"bytes", "sha256", "files"})


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"extra"}
