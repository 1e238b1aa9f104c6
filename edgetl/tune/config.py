"""``TuneConfig``: everything a hyperparameter search depends on (saved as ``STUDY_DIR/tune.json``), and
``TuneResult``, what a search returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("top1", "top1+latency")


@dataclass
class TuneConfig:
    """A search over fine-tuning options with Optuna."""

    data: str
    """Dataset root, as for ``edgetl finetune``."""
    trials: int = 20
    """Finished trials the study should hold (complete, pruned or crashed); trials of earlier runs count."""
    timeout: float | None = None
    """Stop starting new trials after this many seconds (a running trial finishes)."""
    space: str | None = None
    """Search-space YAML (option: {low, high, log} | {choices: [...]} | fixed value) [default: the built-in space]."""
    output: str = ""
    """Study folder (trials/, study.db or journal.log, best.yaml, report.html) [default: runs/DATASET-tune]."""
    storage: str | None = None
    """Optuna storage URL (sqlite:///..., postgresql://...) [default: STUDY_DIR/study.db, or a journal file with --workers > 1]."""
    study_name: str | None = None
    """Name of the study in the storage [default: the study folder's name]."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    """Stop unpromising trials at an epoch end (single-objective studies only)."""
    workers: int = 1
    """Worker processes on this machine sharing the study (journal storage unless --storage is given)."""
    objective: Literal["top1", "top1+latency"] = "top1"
    """Maximise val top-1, or maximise top-1 and minimise batch-1 latency (a Pareto front, no pruning)."""
    latency_target: str | None = None
    """top1+latency: time each trial built for this target, with its runtime (see edgetl targets)
    [default: the float ONNX model under onnxruntime on this CPU]."""
    latency_precision: str | None = None
    """Precision of the --latency-target build [default: the target's]."""
    seed: int | None = None
    """Sampler seed (None: random)."""
    threads: int | None = None
    """Torch CPU threads per trial [default: the cores divided among the workers]."""

    def __post_init__(self) -> None:
        from ..config import check_fields

        check_fields(self)  # types first: trials: many is a one-line error naming trials
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1, not {self.trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {self.timeout}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        for name, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("objective", OBJECTIVES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if (self.latency_target or self.latency_precision) and not self.multi_objective:
            raise ConfigError("latency_target and latency_precision need objective top1+latency")
        if self.latency_precision and not self.latency_target:
            raise ConfigError("latency_precision needs latency_target")

    @property
    def study_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / f"{Path(self.data).resolve().name}-tune"

    @property
    def multi_objective(self) -> bool:
        return self.objective == "top1+latency"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuneResult:
    """What :func:`edgetl.tune.tune` returns: the study's trials, its best trial and the files written."""

    study_dir: Path
    storage: str
    trials: list[dict[str, Any]]
    """One row per trial: number, state, values, params, duration_s, run, error."""
    best: dict[str, Any] | None
    """Best trial's row (single objective), or None."""
    best_config: Path | None
    report: Path | None
    warnings: list[str]
