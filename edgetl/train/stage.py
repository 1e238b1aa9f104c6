"""A training as a run's ``finetune`` stage: what a new fine-tuning run, a pruning recovery and a resume of
either share. The stage's lifecycle is :func:`edgetl.run.stage.stage`'s; this module adds what a training
records (its run files, history and the frozen split) and how it continues from ``checkpoints/last.pt``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunFolderError
from ..run.keys import FINETUNE, Precision, Status
from ..run.split import SPLIT_NAME
from ..run.stage import stage
from .callbacks import BEST, LAST
from .settings import recorded_settings, resumable_part
from .trainer import CONFUSION, METRICS, FinetuneResult, Trainer

log = logging.getLogger(__name__)
BUSY = "it is still training; wait for it or stop it first"
"""Why a second process may not train a run that is training."""
CHECKPOINT_RECORD = {"runtime": "torch", "precision": Precision.FP32, "format": "pytorch"}
"""What ``checkpoint.pt``'s artifact record says of it (bench and packaging read it)."""


def train_stage(trainer: Trainer, manifest: Any, options: Mapping[str, Any], *, resume: bool = False,
                lock: Any = None, staging: Any = None) -> FinetuneResult:
    """Run ``trainer`` (main process) as ``manifest``'s finetune stage: a new one recording ``options`` (the
    frozen split is recorded at once), or with ``resume`` the stage reopened, ``options`` updating the
    recorded ones. ``lock``: the stage lock the caller holds. A new run in ``staging`` that fails before its
    first checkpoint leaves nothing to resume; after it, the failure says how to resume."""
    try:
        with stage(manifest, FINETUNE, options, {}, reopen=resume, lock=lock) as st:
            if not resume:  # listed at once: a run stopped mid-way still proves its split
                manifest.add_artifact(FINETUNE, manifest.run_dir / SPLIT_NAME)
                manifest.save()
            result = trainer.run(fresh=not resume)
            st.artifact(trainer.run_dir / BEST, **CHECKPOINT_RECORD)
            for name in (METRICS, CONFUSION):
                st.artifact(trainer.run_dir / name)
            st.record["history"] = result.history
            st.metrics.update(result.metrics)
    except BaseException as exc:
        if staging is None or staging.promoted:
            status = Status.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else Status.FAILED
            log.error("fine-tuning %s; resume with: edgetl finetune --resume %s", status, trainer.run_dir)
        raise
    return result


def check_resumable(run_dir: str | Path, record: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
    """A one-line RunFolderError when the finetune stage ``record`` of ``run_dir`` cannot continue."""
    if record.get("status") == Status.COMPLETE and "epochs" not in changes:
        raise RunFolderError(f"{run_dir} already finished fine-tuning; pass --epochs N to train it further")
    if not (Path(run_dir) / LAST).is_file():
        raise RunFolderError(f"{run_dir} has no {LAST} (it stopped before the first epoch ended): "
                             "start it again with --overwrite")


def resume_training(manifest: Any, options: Mapping[str, Any], changes: Mapping[str, Any], *, progress: bool,
                    lock: Any = None, loss_for: Callable[[Any], Any] | None = None) -> FinetuneResult:
    """Continue ``manifest``'s training from ``checkpoints/last.pt`` with ``options`` (its recorded finetune
    options, ``changes`` applied), the same data order and RNG states; every process of a job calls it, the
    main one (holding ``lock``) records the stage. ``loss_for(bundle)``: the loss to train with (a pruned run:
    reshapes the bundle and distils from its parent); default cross-entropy."""
    import torch

    from .._allocator import steady_allocator
    from ..models import build_model
    from ..data import load_run_splits
    from . import distributed

    settings = recorded_settings(options)
    steady_allocator()
    distributed.set_threads(settings.threads)
    torch.manual_seed(settings.seed)
    splits = load_run_splits(manifest, dict(options))
    bundle = build_model(manifest.model["name"], len(splits.classes), pretrained=False,
                         image_size=options.get("image_size"))
    loss = loss_for(bundle) if loss_for is not None else None
    trainer = Trainer(settings, bundle, splits, manifest.run_dir, progress=progress, loss=loss)
    trainer.restore()
    if "epochs" in changes and settings.epochs <= trainer.epoch:
        raise ConfigError(f"{manifest.run_dir} has trained {trainer.epoch} epoch(s) already: --epochs must be more "
                          f"than {trainer.epoch} to train it further")
    if not trainer.is_main:
        return trainer.run(fresh=False)
    return train_stage(trainer, manifest, resumable_part(options), resume=True, lock=lock)
