"""What the training loop needs, and nothing else: :class:`TrainSettings`.

A fine-tuning run builds its settings from its :class:`~edgetl.finetune.FinetuneConfig`, a pruning recovery
from its prune options and the parent's training. Both record their training as the options of the run's
``finetune`` stage, with the same names; :func:`recorded_settings` reads them back (resume reads them so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

RESUMABLE = ("epochs", "patience", "workers", "threads", "save_every_epoch")
"""Options a resumed run may change; every other option is fixed by what the run was trained with."""


@dataclass(frozen=True)
class TrainSettings:
    """One training: how long, how fast, what regularises it, what it writes."""

    epochs: int
    batch_size: int
    """The global batch, split evenly over the processes of a multi-process run."""
    lr: float
    """Head learning rate; the backbone trains at ``lr * backbone_lr_scale``."""
    strategy: str = "full"
    """linear-probe, full or gradual (:mod:`~edgetl.train.strategies`)."""
    optimizer: str = "adamw"
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    """Linear warm-up before the cosine decay (none for a linear probe)."""
    label_smoothing: float = 0.1
    """Of the default cross-entropy loss (a loss object given to the trainer brings its own)."""
    augment: bool = True
    augment_strength: float = 1.0
    probe_epochs: int = 0
    """gradual: first fit the head alone on cached backbone features for this many epochs."""
    cache_features: bool = False
    """linear-probe: train the head on backbone features computed once."""
    patience: int | None = None
    """Stop after this many epochs without improvement (None: never)."""
    ema: float | None = None
    """Evaluate and keep a moving average of the weights with this decay (None: the weights themselves)."""
    freeze_bn: bool = False
    """Keep every BatchNorm's statistics fixed (frozen layers keep theirs anyway)."""
    sync_bn: bool = False
    seed: int = 0
    workers: int = 1
    threads: int | None = None
    """Torch threads the caller sets (:func:`~edgetl.train.distributed.set_threads`); None: a share of the cores."""
    start_is_candidate: bool = False
    """Evaluate the model before training as epoch 0: an epoch must beat it to replace it (a recovery after
    pruning never ends worse than it started)."""
    checkpoints: bool = True
    """Write the run's files: ``checkpoint.pt`` (best epoch), ``checkpoints/last.pt`` (for resume),
    ``metrics.json`` and the confusion matrix, and end on the best epoch's weights. Off: an in-memory training
    (between pruning steps) that ends on its last weights."""
    save_every_epoch: bool = False
    """Also keep ``checkpoints/epoch_NNN.pt`` for every epoch."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("patience must be at least 1 (or None to disable early stopping)")

    @property
    def cached(self) -> bool:
        """A linear probe on cached features: no image passes through the backbone while training."""
        return self.strategy == "linear-probe" and self.cache_features


def default_lr(strategy: str) -> float:
    """The head learning rate when none is given: 3e-3 for a linear probe, 1e-3 otherwise."""
    return 3e-3 if strategy == "linear-probe" else 1e-3


def recorded_settings(options: Mapping[str, Any], **changes: Any) -> TrainSettings:
    """The settings that a ``finetune`` stage's recorded options (``FinetuneConfig.to_dict()``, or a pruning
    recovery's) train with, plus ``changes`` (settings no record holds: ``start_is_candidate``, ...).

    An option the record lacks takes the setting's default; ``lr`` None is :func:`default_lr`, ``freeze_bn``
    None is "yes when the model started from trained weights"."""
    names = {f.name for f in fields(TrainSettings)}
    values = {k: v for k, v in options.items() if k in names and v is not None}
    strategy = values.get("strategy", "full")
    values.setdefault("lr", default_lr(strategy))
    if options.get("freeze_bn") is None:
        values["freeze_bn"] = bool(options.get("pretrained", True) or options.get("weights") is not None)
    for name in ("patience", "ema", "threads"):  # None is a value of theirs
        if name in options:
            values[name] = options[name]
    return TrainSettings(**{**values, **changes})


def resumed_options(recorded: Mapping[str, Any], changes: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """``recorded`` (a run's ``finetune`` options) with ``changes``: a :data:`RESUMABLE` option takes its new
    value, any other may only repeat the recorded one (paths compared resolved); a one-line ConfigError else."""
    options = dict(recorded)
    for name, value in changes.items():
        if name not in options:
            raise ConfigError(f"unknown fine-tuning option {name!r}")
        if name in RESUMABLE:
            options[name] = value
        elif not _same(options[name], value, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} cannot change when resuming ({run_dir} was trained with {name}="
                              f"{options[name]!r}); only {', '.join('--' + r.replace('_', '-') for r in RESUMABLE)} "
                              "can: start a new run with -o for other settings")
    return options


def resumable_part(options: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`RESUMABLE` options of ``options`` (what a resume records into the stage's options)."""
    return {name: options.get(name) for name in RESUMABLE}


def _same(recorded: Any, given: Any, name: str) -> bool:
    if name in ("data", "val") and recorded and given:
        return Path(recorded).resolve() == Path(given).resolve()
    return recorded == given
