"""``tune()``: create or resume a study, run its trials in one or several processes, write the report.

The total is exact: a worker asks for a trial only while holding ``STUDY_DIR/.ask.lock`` and after counting
the finished and running trials, and lets go as soon as its trial exists (several machines on one database
URL each hold their own lock, so they may overshoot by at most one trial per extra machine).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .._outputs import STUDY_CONFIG
from ..errors import ConfigError, MissingBackendError
from .config import TuneConfig, TuneResult
from .space import SearchSpace, load_space

log = logging.getLogger(__name__)

LOCK_NAME, CONFIG_NAME = ".ask.lock", STUDY_CONFIG


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MissingBackendError("optuna", "tune", "edgetl tune") from None


def tune(config: TuneConfig, *, sampler: Any = None, pruner: Any = None, callbacks: list[Any] | None = None,
         progress: bool = True) -> TuneResult:
    """Run (or resume) the study described by ``config`` until it holds ``config.trials`` finished trials.

    ``sampler``/``pruner`` (Optuna objects) replace the named ones; ``callbacks`` are extra trainer callbacks
    for every trial (single process only).
    """
    require_optuna()
    from .._outputs import STUDY_FOLDER, claim_output
    from .report import write_outputs
    from .storage import redact, storage_url

    space = load_space(config.space)
    data = Path(config.data).resolve()
    if not data.is_dir():
        from ..errors import DatasetError

        raise DatasetError(f"dataset path does not exist: {config.data}")
    config.data = str(data)
    if config.latency_target:
        from .latency import check_latency_target

        config.latency_precision = check_latency_target(config.latency_target, config.latency_precision)
    warnings = _warnings(config)
    for message in warnings:
        log.warning(message)
    if config.workers > 1 and (sampler is not None or pruner is not None or callbacks):
        raise ConfigError("custom sampler, pruner or callbacks objects only work with workers=1")
    study_dir = claim_output(config.study_dir, STUDY_FOLDER, data_roots=[data])  # new, empty, or a study to resume
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(config)
    _save_config(study_dir, config, redact(url))
    study = _open(config, url, space, sampler, pruner)
    from .storage import fail_stale_trials

    fail_stale_trials(study)
    salt = len(study.get_trials(deepcopy=False))  # a resumed study must not replay the seed's first samples
    if config.workers > 1:
        _run_workers(config, url, salt)
    else:
        if sampler is None:
            study.sampler = make_sampler(config, space, salt)
        run_trials(config, study, space, threads=config.threads, callbacks=callbacks)
    study = _open(config, url, space, sampler, pruner)
    return write_outputs(study, config, space, redact(url), warnings)


def _warnings(config: TuneConfig) -> list[str]:
    out = []
    if config.multi_objective and config.pruner != "none":
        out.append("Optuna cannot prune multi-objective studies (top1+latency): every trial runs all its epochs")
    return out


def _save_config(study_dir: Path, config: TuneConfig, url: str) -> None:
    from .._io import write_json

    write_json(study_dir / CONFIG_NAME, {**config.to_dict(), "storage": url})


def _open(config: TuneConfig, url: str, space: SearchSpace, sampler: Any, pruner: Any, salt: int = 0) -> Any:
    from .storage import load_study

    return load_study(config, url, sampler=sampler or make_sampler(config, space, salt),
                      pruner=pruner or make_pruner(config))


def make_sampler(config: TuneConfig, space: SearchSpace, salt: int = 0) -> Any:
    """The sampler; with a seed, ``salt`` (trials already in the study, and the worker) keeps a resumed study
    or a second worker from drawing the same configurations again."""
    import optuna

    seed = None if config.seed is None else config.seed + salt
    if config.sampler == "grid":
        if not space.params:
            raise ConfigError("the grid sampler needs at least one searched option in the space")
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.multi_objective:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(config: TuneConfig) -> Any:
    import optuna

    if config.pruner == "none" or config.multi_objective:
        return optuna.pruners.NopPruner()
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def counted(study: Any) -> int:
    """Trials that count toward the total: finished (complete, pruned, crashed) or running, not stale."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not t.user_attrs.get("stale"))


def run_trials(config: TuneConfig, study: Any, space: SearchSpace, *, threads: int | None,
               callbacks: list[Any] | None = None) -> int:
    """Ask for and run trials until the study holds ``config.trials`` (or the timeout or grid ends)."""
    from filelock import FileLock

    from .objective import Objective

    lock = FileLock(str(config.study_dir.resolve() / LOCK_NAME))
    objective = Objective(config, space, threads=threads, callbacks=callbacks,
                          release=lambda: lock.release(force=True) if lock.is_locked else None)
    start, ran = time.monotonic(), 0
    while config.timeout is None or time.monotonic() - start < config.timeout:
        lock.acquire()
        try:
            if counted(study) >= config.trials or _grid_done(study):
                break
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            ran += 1
        finally:
            if lock.is_locked:
                lock.release(force=True)
    return ran


def _grid_done(study: Any) -> bool:
    import optuna

    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def _run_workers(config: TuneConfig, url: str, salt: int = 0) -> None:
    """``config.workers`` processes on this machine, each running trials until the total is reached."""
    import multiprocessing

    from ..train.distributed import usable_cores

    cores = usable_cores()
    threads = config.threads or max(1, cores // config.workers)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(config.to_dict(), url, threads, salt + 1000 * (i + 1)),
                         name=f"edgetl-tune-{i}")
             for i in range(config.workers)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        raise
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed:
        log.warning("worker(s) %s exited with an error; their running trials are failed on the next run",
                    ", ".join(failed))


def worker_main(config_dict: dict[str, Any], url: str, threads: int, salt: int = 0) -> None:
    """Entry point of one worker process (spawned): open the shared study and run trials."""
    from .._console import setup_logging

    setup_logging(False)
    config = TuneConfig(**config_dict)
    space = load_space(config.space)
    study = _open(config, url, space, None, None, salt)
    run_trials(config, study, space, threads=threads)
