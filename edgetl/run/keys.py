"""The names a run folder uses: stage keys, statuses, states and precisions (the only module that spells them).

A stage's key is its name in ``edgetl.json``'s ``stages``::

    finetune | prune | onnx | bench           one stage of that kind per run
    TARGET:PRECISION                          a target build        (``intel-cpu:int8``)
    TARGET:PRECISION:engine                   a TensorRT engine compiled on the device (``jetson:int8:engine``)
    TARGET:PRECISION:qat                      a target build by quantization-aware training (``jetson:int8:qat``)

:class:`StageKey` parses and prints them; the on-disk names never change. The enums mix in ``str`` so a
member equals the string stored in JSON (``Status.COMPLETE == "complete"``) and prints as it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import RunFolderError


class _Name(str, Enum):
    """A ``str`` enum that prints as its value (``enum.StrEnum`` needs Python 3.11)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class StageKind(_Name):
    FINETUNE = "finetune"
    PRUNE = "prune"
    ONNX = "onnx"
    BUILD = "build"
    """A target build, ``TARGET:PRECISION`` on disk."""
    ENGINE = "engine"
    """A TensorRT engine compiled on the device, ``TARGET:PRECISION:engine`` on disk (command ``compile``)."""
    QAT = "qat"
    """A target build trained under fake-quant, ``TARGET:PRECISION:qat`` on disk (``export --qat``)."""
    BENCH = "bench"
    TUNE = "tune"
    """A study: it writes a study folder of child runs, no stage record in a run."""
    PACKAGE = "package"
    """A bundle: it writes outside the run, no stage record."""


class Status(_Name):
    """A stage record's ``status``."""

    RUNNING = "running"
    COMPLETE = "complete"
    BUDGET_MISSED = "budget-missed"
    """Complete, but the accuracy budget was not met: usable, said loudly."""
    FAILED = "failed"
    INTERRUPTED = "interrupted"


DONE = frozenset({Status.COMPLETE, Status.BUDGET_MISSED})


def is_done(status: str | None) -> bool:
    """A recorded status (a plain string from JSON) that means the stage's artifacts are usable."""
    return status in DONE


class RunState(_Name):
    """What ``edgetl status`` says of a stage (besides a status that is not done)."""

    CURRENT = "current"
    STALE = "stale"
    MODIFIED = "modified"
    MISSING = "missing"
    UNSAFE = "unsafe"
    """A recorded file is a symlink leaving the run folder."""
    BUSY = "busy"
    BUDGET_MISSED = "budget-missed"
    """Current, but the build lost more accuracy than its budget allows (``edgetl status`` exits non-zero)."""


class Precision(_Name):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


QAT_TRAINING_DIR = "qat"
"""``RUN/qat/TARGET-PRECISION/``: a QAT build's training files (checkpoints, history), not deployed."""
ENGINE_SUFFIX = StageKind.ENGINE.value
QAT_SUFFIX = StageKind.QAT.value
_SUFFIXED = {ENGINE_SUFFIX: StageKind.ENGINE, QAT_SUFFIX: StageKind.QAT}
_TARGETED = (StageKind.BUILD, StageKind.ENGINE, StageKind.QAT)
_SINGLE = (StageKind.FINETUNE, StageKind.PRUNE, StageKind.ONNX, StageKind.BENCH)


@dataclass(frozen=True)
class StageKey:
    """A stage's identity: its kind, and for builds and engines the target and precision."""

    kind: StageKind
    target: str | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StageKind(self.kind))
        targeted = self.kind in _TARGETED
        if targeted != bool(self.target and self.precision):
            raise ValueError(f"stage kind {self.kind} {'needs' if targeted else 'takes no'} target and precision")
        for part in (self.target, self.precision):
            if part is not None and (":" in part or not part):
                raise ValueError(f"bad target or precision in a stage key: {part!r}")

    @classmethod
    def parse(cls, name: str) -> StageKey:
        """The key of a stage name as stored in ``edgetl.json``; :class:`RunFolderError` for a name no
        edgetl version writes."""
        parts = name.split(":")
        try:
            if len(parts) == 1 and name in StageKind.values() and StageKind(name) in _SINGLE:
                return cls(StageKind(name))
            if len(parts) == 2:
                return cls(StageKind.BUILD, parts[0], parts[1])
            if len(parts) == 3 and parts[2] in _SUFFIXED:
                return cls(_SUFFIXED[parts[2]], parts[0], parts[1])
        except ValueError:
            pass
        raise RunFolderError(f"unknown stage name {name!r} in a run manifest")

    @classmethod
    def build(cls, target: str, precision: str) -> StageKey:
        return cls(StageKind.BUILD, target, str(precision))

    @classmethod
    def engine(cls, target: str, precision: str) -> StageKey:
        return cls(StageKind.ENGINE, target, str(precision))

    @classmethod
    def qat(cls, target: str, precision: str) -> StageKey:
        return cls(StageKind.QAT, target, str(precision))

    def __str__(self) -> str:
        if self.kind is StageKind.BUILD:
            return f"{self.target}:{self.precision}"
        if self.kind in _TARGETED:
            return f"{self.target}:{self.precision}:{self.kind.value}"
        return self.kind.value

    @property
    def built_from(self) -> StageKey | None:
        """The build an engine is compiled from, the PTQ build a QAT build improves on (None for other kinds)."""
        if self.kind in (StageKind.ENGINE, StageKind.QAT):
            return StageKey.build(self.target or "", self.precision or "")
        return None


def try_parse(name: str) -> StageKey | None:
    """:meth:`StageKey.parse`, or None for a name that is not a stage key."""
    try:
        return StageKey.parse(name)
    except RunFolderError:
        return None


FINETUNE = StageKey(StageKind.FINETUNE)
PRUNE = StageKey(StageKind.PRUNE)
ONNX = StageKey(StageKind.ONNX)
BENCH = StageKey(StageKind.BENCH)
