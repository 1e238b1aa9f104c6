"""One trial: the default fine-tuning options plus the sampled ones, trained as a child run of the study.

Trials share the dataset scan and, when the backbone is frozen (linear probe, or the head fit that starts
gradual unfreezing), its features (``STUDY_DIR/cache``, see :mod:`edgetl.train.cache`).
Val top-1 is reported to the pruner at every epoch end through the trainer's callbacks; a pruned trial
stops training, keeps its run folder (best checkpoint so far) and is recorded PRUNED. A crash is recorded
on the trial (``error``) and in its run folder, and the study goes on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..run.keys import StageKind
from ..train.cache import SharedCache
from .config import TuneConfig
from .space import SearchSpace
from .storage import claim

log = logging.getLogger(__name__)

TRIALS_DIR, CACHE_DIR = "trials", "cache"


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / TRIALS_DIR / f"trial-{number:03d}"


class PruningCallback:
    """Reports val top-1 at each epoch end; asks the trial whether to prune and stops the trainer if so."""

    def __init__(self, trial: Any, prune: bool = True) -> None:
        self.trial, self.prune, self.pruned_at = trial, prune, None

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if not self.prune:
            return
        self.trial.report(float(record["val_top1"]), int(record["epoch"]))
        if self.trial.should_prune():
            self.pruned_at = int(record["epoch"])
            log.info("trial %d pruned after epoch %d (val top-1 %.2f%%)", self.trial.number, self.pruned_at,
                     100 * record["val_top1"])
            trainer.should_stop = True


class Objective:
    """``objective(trial)`` for ``study.optimize``: val top-1 (and latency in ms for ``top1+latency``)."""

    def __init__(self, config: TuneConfig, space: SearchSpace, *, threads: int | None = None,
                 callbacks: list[Any] | None = None, release: Any = None) -> None:
        self.config, self.space, self.threads = config, space, threads
        self.callbacks = list(callbacks or [])  # extra trainer callbacks (tests)
        self.release = release  # called first: lets the next worker ask for a trial
        self.study_dir = config.study_dir.resolve()
        # trials share the dataset scan (this process) and a frozen backbone's features (every worker)
        self.cache = SharedCache(self.study_dir / CACHE_DIR)

    def __call__(self, trial: Any) -> Any:
        import optuna

        if self.release is not None:
            self.release()
        claim(trial)
        options = self.space.sample(trial)
        run_dir = trial_dir(self.study_dir, trial.number)
        pruning = PruningCallback(trial, prune=not self.config.multi_objective)
        start, hits = time.perf_counter(), dict(self.cache.hits)
        try:
            result = self._train(options, run_dir, [pruning, *self.callbacks])
        except Exception as exc:
            _record_error(trial, exc)
            trial.set_user_attr("run", str(run_dir) if run_dir.exists() else None)
            _mark_child(run_dir, trial, self.config)
            raise
        finally:
            trial.set_user_attr("duration_s", round(time.perf_counter() - start, 1))
            trial.set_user_attr("shared", [k for k, v in self.cache.hits.items() if v > hits[k]])
        trial.set_user_attr("run", str(result.run_dir))
        trial.set_user_attr("epochs_run", result.metrics["epochs_run"])
        _mark_child(Path(result.run_dir), trial, self.config, pruned_at=pruning.pruned_at)
        top1 = float(result.metrics["top1"])
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        if not self.config.multi_objective:
            return top1
        try:
            latency = self._latency(result.run_dir)
        except Exception as exc:
            _record_error(trial, exc)
            raise
        trial.set_user_attr("latency_ms", latency)
        trial.set_user_attr("duration_s", round(time.perf_counter() - start, 1))  # with the build and timing
        return top1, latency

    def _latency(self, run_dir: Path) -> float:
        from .latency import onnx_latency_ms, target_latency_ms

        if self.config.latency_target:
            return target_latency_ms(run_dir, self.config.latency_target, self.config.latency_precision)
        return onnx_latency_ms(run_dir)

    def _train(self, options: dict[str, Any], run_dir: Path, callbacks: list[Any]) -> Any:
        from ..finetune import FinetuneConfig, finetune

        threads = options.pop("threads", None) or self.threads
        config = FinetuneConfig(data=self.config.data, output=str(run_dir), threads=threads, **options)
        return finetune(config, progress=False, callbacks=callbacks, cache=self.cache)


def finetune_options(params: dict[str, Any], fixed: dict[str, Any], data: str) -> dict[str, Any]:
    """The full option set of a trial, as ``edgetl finetune --config`` reads it (no output folder)."""
    from ..finetune import FinetuneConfig

    config = FinetuneConfig(data=data, **{**fixed, **params})
    out = config.to_dict()
    out.pop("output", None)
    return out


def _record_error(trial: Any, exc: BaseException) -> None:
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    trial.set_user_attr("error", f"{type(exc).__name__}: {message}"[:500])


def _mark_child(run_dir: Path, trial: Any, config: TuneConfig, pruned_at: int | None = None) -> None:
    """Record in the trial's run folder that it is a child of the study (lineage, like a pruned run's)."""
    from ..run.manifest import MANIFEST_NAME, Manifest

    if not (run_dir / MANIFEST_NAME).is_file():
        return
    manifest = Manifest.load(run_dir)
    manifest.set("parent", {"study": str(config.study_dir.resolve()), "stage": StageKind.TUNE, "trial": trial.number,
                            "study_name": trial.study.study_name, "pruned_at_epoch": pruned_at})
    manifest.save()

