"""What a :class:`~edgetl.train.trainer.Trainer` does after each epoch: ``on_epoch_end(trainer, record)``.

``record`` is the epoch's history entry plus ``improved`` (a new best model); a start candidate's evaluation
before training is epoch 0. A callback may set ``trainer.should_stop``. The trainer calls its own first,
:class:`Checkpoints` (when its settings write files), then the ones it was given (:class:`PromoteStaging`
for a new run, a search's pruner), then :class:`EarlyStopping` (with ``patience``). Every process calls
them; only the main one (rank 0) writes files.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_path
from ..errors import RunFolderError

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)
BEST = "checkpoint.pt"
"""The best epoch's model (what later stages read)."""
LAST = "checkpoints/last.pt"
"""The full training state after the last epoch (what ``--resume`` continues)."""
_STATE_FIELDS = {"model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "best": (int, float),
                 "best_epoch": int, "bad_epochs": int, "history": list}  # what LAST holds, by type


class Checkpoints:
    """After every epoch the training state (``checkpoints/last.pt``, and ``epoch_NNN.pt`` with
    ``every_epoch``); when an epoch improves, the model it evaluated (``checkpoint.pt``)."""

    def __init__(self, every_epoch: bool = False) -> None:
        self.every_epoch = every_epoch

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if not trainer.is_main:
            return
        if record["improved"]:
            self.save_best(trainer)
        self.save_state(trainer)

    def save_best(self, trainer: Trainer) -> None:
        _save(trainer.best_checkpoint(), trainer.run_dir / BEST)

    def save_state(self, trainer: Trainer) -> None:
        path = trainer.run_dir / LAST
        _save(trainer.training_state(), path)
        if self.every_epoch:
            shutil.copyfile(path, path.with_name(f"epoch_{trainer.epoch:03d}.pt"))


def _save(payload: dict[str, Any], path: Path) -> None:
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def read_state(run_dir: Path, *, ema: bool) -> dict[str, Any]:
    """``checkpoints/last.pt`` of ``run_dir``, read by the one safe loader and checked field by field (a
    damaged or foreign file is a one-line RunFolderError)."""
    from ..models import load_torch_file
    from ..run.safe_paths import run_file

    path = run_file(run_dir, LAST)
    state = load_torch_file(path, what="an edgetl training state", hint=restart_hint(run_dir))
    wanted = {**_STATE_FIELDS, **({"ema": dict} if ema else {})}
    bad = [k for k, kind in wanted.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    if bad:
        raise RunFolderError(f"{path} is not an edgetl training state (damaged or foreign; no valid "
                             f"{', '.join(bad)}): {restart_hint(run_dir)}")
    return state


def restart_hint(run_dir: Path) -> str:
    return f"fine-tune again without --resume (edgetl finetune DATA -o {run_dir} --overwrite)"


class PromoteStaging:
    """A new run is written in a staging folder (:class:`~edgetl.run.newrun.RunStaging`): move it into place
    once its first checkpoint is written (the trainer and the manifest follow it there)."""

    def __init__(self, staging: Any, manifest: Any) -> None:
        self.staging, self.manifest = staging, manifest

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.is_main and not self.staging.promoted:
            trainer.run_dir = self.manifest.run_dir = self.staging.promote()


class EarlyStopping:
    """Stop after ``patience`` epochs without a better val top-1 (or the same top-1 at a lower val loss)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.bad_epochs >= self.patience:
            log.info("early stopping: no improvement for %d epochs", self.patience)
            trainer.should_stop = True
