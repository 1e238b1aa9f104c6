"""Transfer learning: linear probe, full fine-tune, gradual unfreezing; checkpoints and resume.

The run folder is created only after the dataset and model have been validated; every epoch
writes ``checkpoints/last.pt`` (the full training state, for ``--resume``) and, when val top-1
improves, ``checkpoint.pt`` (the float model that later stages read).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._allocator import steady_allocator
from ._console import progress_bar
from ._io import atomic_path, sha256, write_json
from .data import DatasetSplits, load_splits, make_loader
from .errors import ConfigError, DatasetError, RunFolderError
from .run.lock import StageLock
from .run.manifest import Manifest
from .run.split import SPLIT_NAME, write_split
from .metrics import classification_metrics, plot_confusion_matrix
from .models import ModelBundle, build_model

log = logging.getLogger(__name__)

Strategy = Literal["linear-probe", "full", "gradual"]
STRATEGIES = ("linear-probe", "full", "gradual")
STAGE = "finetune"


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on; saved in the manifest and reused by ``--resume``."""

    data: str
    """Dataset root: ``ROOT/train`` + ``ROOT/val`` class folders, or ``ROOT/CLASS`` (split automatically)."""
    output: str = ""
    """Run folder; default ``runs/<dataset>-<model>`` (beside the dataset when the working directory is inside it)."""
    model: str = "efficientnet_lite0"
    """Backbone name (edgetl, torchvision or timm; ``timm:``/``torchvision:`` prefixes choose explicitly)."""
    weights: str | None = None
    """Local weight file to start from instead of downloading pretrained weights."""
    pretrained: bool = True
    """Start from pretrained weights (False: random init)."""
    strategy: Strategy = "full"
    """linear-probe (frozen backbone), full (everything trains) or gradual (unfreeze from the top)."""
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    """Head learning rate; default 3e-3 for linear-probe, 1e-3 otherwise."""
    backbone_lr_scale: float = 0.1
    """Backbone learning rate as a fraction of ``lr`` (full and gradual)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    """Linear warm-up before the cosine decay (ignored for linear-probe)."""
    augment: bool = True
    """Random resized crop, flip and colour jitter on training images (not with cached features)."""
    probe_epochs: int = 10
    """gradual only: first train the head alone on cached features for this many (cheap) epochs, so
    unfreezing starts from a converged head (LP-FT); 0 skips it."""
    cache_features: bool = True
    """linear-probe only: compute backbone features once and train the head on them."""
    patience: int | None = 5
    """Stop after this many epochs without a better val top-1 (None: never)."""
    val: str | None = None
    """Explicit validation folder (default: ROOT/val, or a split of the training folder)."""
    val_fraction: float = 0.2
    image_size: int | None = None
    """Override the backbone's input resolution (keeps its crop ratio)."""
    seed: int = 0
    workers: int = 1
    threads: int | None = None
    strict: bool = False
    """Fail on the first unreadable image instead of skipping and counting it."""
    freeze_bn: bool | None = None
    """Keep BatchNorm statistics fixed while fine-tuning (None: yes when starting from pretrained weights,
    which small datasets cannot re-estimate well; no for random init)."""
    save_every_epoch: bool = False
    """Keep ``checkpoints/epoch_NNN.pt`` for every epoch, not only the last and the best."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, not {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("lr must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing must be in [0, 1)")
        if self.probe_epochs < 0:
            raise ConfigError("probe_epochs cannot be negative")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("patience must be at least 1 (or None to disable early stopping)")

    @property
    def run_name(self) -> str:
        """Default run folder name: ``DATASET-MODEL``."""
        return f"{Path(self.data).resolve().name}-{self.model.replace(':', '-')}"

    @property
    def head_lr(self) -> float:
        return self.lr if self.lr is not None else (3e-3 if self.strategy == "linear-probe" else 1e-3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


# -- public entry points ------------------------------------------------------------------

RESUMABLE = ("epochs", "patience", "workers", "threads", "save_every_epoch")
"""Options a resumed run may change; every other option is fixed by what the run was trained with."""


def finetune(config: FinetuneConfig, *, overwrite: bool = False, progress: bool = True) -> FinetuneResult:
    """Train a new run from ``config``. An existing run folder is replaced only with ``overwrite``, and only
    once the new run has finished its first epoch (see :mod:`edgetl.run.newrun`)."""
    import torch

    from .run.newrun import RunStaging, check_output, default_output

    data_root = Path(config.data).resolve()
    if not data_root.exists():
        raise DatasetError(f"dataset path does not exist: {config.data}")
    config.data, config.val = str(data_root), str(Path(config.val).resolve()) if config.val else None
    output = Path(config.output) if config.output else default_output(data_root, config.run_name)
    roots = [data_root] + ([Path(config.val)] if config.val else [])
    run_dir = check_output(output, roots, overwrite=overwrite)
    config.output = str(run_dir)
    steady_allocator()  # activations are allocated and freed every step: keep them out of mmap/munmap
    _set_threads(config.threads)
    torch.manual_seed(config.seed)
    splits = load_splits(config.data, val=config.val, val_fraction=config.val_fraction, seed=config.seed,
                         strict=config.strict)
    _log_splits(splits)
    bundle = build_model(config.model, len(splits.classes), pretrained=config.pretrained, weights=config.weights,
                         image_size=config.image_size)
    staging = RunStaging(run_dir)
    try:
        with StageLock(staging.path, STAGE):
            manifest = Manifest.create(staging.path, model=_model_record(bundle, config), classes=splits.classes,
                                       preprocessing=bundle.preprocess.to_dict())
            split_file = write_split(staging.path, splits.classes, splits.train, splits.val, splits.val_source)
            manifest.set("dataset", {**_dataset_record(splits, config), "split": SPLIT_NAME,
                                     "split_sha256": sha256(split_file)})
            trainer = _Trainer(config, bundle, splits, manifest, progress=progress, staging=staging)
            return trainer.run(fresh=True)
    finally:
        staging.discard()  # a run that never finished an epoch leaves nothing (and the old run intact)


def resume(run_dir: str | Path, *, progress: bool = True, epochs: int | None = None,
           changes: dict[str, Any] | None = None) -> FinetuneResult:
    """Continue a run from ``checkpoints/last.pt`` with its recorded options, data order and RNG states.

    ``epochs`` (or ``changes["epochs"]``) extends a run; other ``changes`` may only touch :data:`RESUMABLE`
    options or repeat the recorded value. The run must not be training in another process.
    """
    import torch

    manifest = Manifest.load(run_dir)
    stage = manifest.stage(STAGE)
    if stage is None:
        raise RunFolderError(f"{run_dir} has no finetune stage to resume")
    changes = {**(changes or {}), **({"epochs": epochs} if epochs is not None else {})}
    config = _resumed_config(stage["options"], changes, run_dir)
    with StageLock(run_dir, STAGE).acquire("it is still training; wait for it or stop it first"):
        if stage.get("status") == "complete" and "epochs" not in changes:
            raise RunFolderError(f"{run_dir} already finished fine-tuning; pass --epochs N to train it further")
        if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
            raise RunFolderError(f"{run_dir} has no checkpoints/last.pt (it stopped before the first epoch ended): "
                                 "start it again with --overwrite")
        steady_allocator()
        _set_threads(config.threads)
        torch.manual_seed(config.seed)
        splits = _resumed_splits(manifest, config)
        bundle = build_model(manifest.model["name"], len(splits.classes), pretrained=False,
                             image_size=config.image_size)
        trainer = _Trainer(config, bundle, splits, manifest, progress=progress)
        trainer._restore()
        if "epochs" in changes and config.epochs <= trainer.epoch:
            raise ConfigError(f"{run_dir} has trained {trainer.epoch} epoch(s) already: --epochs must be more than "
                              f"{trainer.epoch} to train it further")
        return trainer.run(fresh=False)


def _resumed_config(recorded: dict[str, Any], changes: dict[str, Any], run_dir: str | Path) -> FinetuneConfig:
    config = FinetuneConfig.from_dict(recorded)
    config.output = str(run_dir)
    for name, value in changes.items():
        if name not in {f.name for f in fields(FinetuneConfig)}:
            raise ConfigError(f"unknown fine-tuning option {name!r}")
        if name in RESUMABLE:
            setattr(config, name, value)
        elif _same(getattr(config, name), value, name):
            continue
        else:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} cannot change when resuming ({run_dir} was trained with {name}="
                              f"{getattr(config, name)!r}); only {', '.join('--' + r.replace('_', '-') for r in RESUMABLE)} "
                              "can: start a new run with -o for other settings")
    config.__post_init__()
    return config


def _same(recorded: Any, given: Any, name: str) -> bool:
    if name in ("data", "val") and recorded and given:
        return Path(recorded).resolve() == Path(given).resolve()
    return recorded == given


def _resumed_splits(manifest: Manifest, config: FinetuneConfig) -> DatasetSplits:
    """The run's frozen split (runs made before it was frozen: recomputed as they were)."""
    from .data import run_eval_samples

    if (manifest.data.get("dataset") or {}).get("split") == SPLIT_NAME:
        train, val = run_eval_samples(manifest, split="train"), run_eval_samples(manifest, split="val")
        return DatasetSplits(manifest.classes, train, val, manifest.data["dataset"].get("val_source", ""), [])
    splits = load_splits(config.data, val=config.val, val_fraction=config.val_fraction, seed=config.seed,
                         strict=config.strict, shared_rng=True)
    if splits.classes != manifest.classes:
        raise RunFolderError(f"the dataset's classes {splits.classes} are not the run's {manifest.classes}")
    return splits


# -- helpers --------------------------------------------------------------------------------

def _set_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)


def _log_splits(splits: DatasetSplits) -> None:
    for scan in splits.scans:
        log.info(scan.summary())
    if splits.skipped:
        log.warning("%d unreadable image(s) skipped (use --strict to fail instead)", splits.skipped)
    log.info("train %d / val %d images (%s), classes: %s", len(splits.train), len(splits.val), splits.val_source,
             ", ".join(splits.classes))


def _model_record(bundle: ModelBundle, config: FinetuneConfig) -> dict[str, Any]:
    return {**bundle.describe(), "input_size": bundle.preprocess.input_size}


def _dataset_record(splits: DatasetSplits, config: FinetuneConfig) -> dict[str, Any]:
    return {"root": str(Path(config.data).resolve()), "train": len(splits.train), "val": len(splits.val),
            "val_source": splits.val_source, "skipped_unreadable": splits.skipped,
            "converted_to_rgb": splits.converted,
            "skipped_files": [str(p) for s in splits.scans for p, _ in s.skipped]}


def layer_groups(model: Any, heads: list[str]) -> list[list[Any]]:
    """Backbone parameters in forward order, grouped by block (top-level children, sequences expanded)."""
    head_ids = {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    groups = []
    for _, child in model.named_children():
        parts = list(child.children()) if len(list(child.children())) > 1 and type(child).__name__ in (
            "Sequential", "ModuleList") else [child]
        for part in parts:
            params = [p for p in part.parameters() if id(p) not in head_ids]
            if params:
                groups.append(params)
    return groups


class _Trainer:
    def __init__(self, config: FinetuneConfig, bundle: ModelBundle, splits: DatasetSplits, manifest: Manifest,
                 progress: bool, staging: Any = None) -> None:
        import torch

        self.config, self.bundle, self.splits, self.manifest = config, bundle, splits, manifest
        self.progress, self.staging = progress, staging
        self.model = bundle.model
        self.run_dir = manifest.run_dir
        self.classes = splits.classes
        self.head_params = [p for h in bundle.head for p in self.model.get_submodule(h).parameters()]
        self.groups = layer_groups(self.model, bundle.head)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.cached = config.strategy == "linear-probe" and config.cache_features
        spec = bundle.preprocess
        augment = config.augment and not self.cached
        self.train_loader = make_loader(splits.train, spec.train_transform(augment), config.batch_size, shuffle=True,
                                        workers=config.workers, seed=config.seed)
        self.val_loader = make_loader(splits.val, spec.eval_transform(), config.batch_size, workers=config.workers)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler(self.steps_per_epoch)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best = -1.0
        self.best_epoch = -1
        self.bad_epochs = 0

    # -- setup ------------------------------------------------------------------------------
    def _make_optimizer(self):
        import torch

        cfg = self.config
        head_ids = {id(p) for p in self.head_params}
        backbone = [p for p in self.model.parameters() if id(p) not in head_ids]
        groups = [{"params": self.head_params, "lr": cfg.head_lr}]
        if cfg.strategy != "linear-probe":
            groups.append({"params": backbone, "lr": cfg.head_lr * cfg.backbone_lr_scale})
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def _make_scheduler(self, steps_per_epoch: int):
        import torch

        total = max(1, self.config.epochs * steps_per_epoch)
        warmup = 0 if self.config.strategy == "linear-probe" else int(self.config.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _trainable_groups(self, epoch: int) -> int:
        """How many backbone groups (from the top) train in ``epoch`` (0-based)."""
        total = len(self.groups)
        if self.config.strategy == "full":
            return total
        if self.config.strategy == "linear-probe":
            return 0
        ramp = max(1, math.ceil(self.config.epochs / 2))  # all unfrozen by half-way
        elapsed = epoch + (1 if self.config.probe_epochs else 0)  # a probed head needs no head-only epoch
        return min(total, math.ceil(total * elapsed / ramp))

    def _apply_freezing(self, epoch: int) -> int:
        n = self._trainable_groups(epoch)
        for i, params in enumerate(self.groups):
            trainable = i >= len(self.groups) - n
            for p in params:
                p.requires_grad_(trainable)
        for p in self.head_params:
            p.requires_grad_(True)
        return n

    @property
    def freeze_bn(self) -> bool:
        if self.config.freeze_bn is not None:
            return self.config.freeze_bn
        return self.config.pretrained or self.config.weights is not None

    def _train_mode(self) -> None:
        """Train mode, but BatchNorms of frozen layers (or all, with ``freeze_bn``) keep their statistics."""
        import torch.nn as nn

        self.model.train()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if self.freeze_bn or not any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()

    # -- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        import torch

        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history,
                "rng": torch.get_rng_state(), "python_rng": random.getstate()}

    def _save_training_state(self) -> None:
        import torch

        path = self.run_dir / "checkpoints" / "last.pt"
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(self._state(), tmp)
        if self.config.save_every_epoch:
            shutil.copyfile(path, self.run_dir / "checkpoints" / f"epoch_{self.epoch:03d}.pt")

    def _save_best(self) -> None:
        import torch

        payload = {"state_dict": self.model.state_dict(), "model_name": self.bundle.name,
                   "num_classes": len(self.classes), "classes": self.classes, "epoch": self.epoch,
                   "image_size": self.bundle.preprocess.input_size}
        with atomic_path(self.run_dir / "checkpoint.pt", suffix=".pt") as tmp:
            torch.save(payload, tmp)

    def _restore(self) -> None:
        import torch

        state = torch.load(self.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.bad_epochs, self.history = state["bad_epochs"], state["history"]
        torch.set_rng_state(state["rng"])
        if "python_rng" in state:
            random.setstate(state["python_rng"])
        log.info("resuming %s after epoch %d (best val top-1 %.2f%% at epoch %d)", self.run_dir, self.epoch,
                 100 * self.best, self.best_epoch)

    # -- features (linear probe) ----------------------------------------------------------------
    def _features(self, loader, progress, label: str):
        """Backbone outputs (head swapped for identity) and labels for every image of ``loader``."""
        import torch
        import torch.nn as nn

        from .models import get_submodule_parent

        parent, attr = get_submodule_parent(self.model, self.bundle.head[0])
        head = getattr(parent, attr)
        setattr(parent, attr, nn.Identity())
        self.model.eval()
        feats, labels = [], []
        task = progress.add_task(label, total=len(loader.dataset), status="")
        try:
            with torch.inference_mode():
                for images, targets in loader:
                    feats.append(self.model(images))
                    labels.append(targets)
                    progress.advance(task, len(targets))
        finally:
            setattr(parent, attr, head)
        return torch.cat(feats), torch.cat(labels)

    # -- loops ------------------------------------------------------------------------------
    def _forward_loss(self, images, targets):
        output = self.model(images)
        if isinstance(output, tuple):  # InceptionV3 in training: (logits, aux_logits)
            logits, aux = output[0], output[1]
            return logits, self.criterion(logits, targets) + 0.4 * self.criterion(aux, targets)
        return output, self.criterion(output, targets)

    def _train_epoch(self, progress, task) -> tuple[float, float]:
        import torch

        self._train_mode()
        self.train_loader.generator.manual_seed(self.config.seed + self.epoch)  # order = f(epoch): resumable
        total_loss, correct, seen = 0.0, 0, 0
        for images, targets in self.train_loader:
            logits, loss = self._forward_loss(images, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            progress.update(task, advance=len(targets), status=f"loss {total_loss / seen:.3f}")
        return total_loss / seen, correct / seen

    def _train_epoch_cached(self, feats, labels, generator, optimizer=None, scheduler=None) -> tuple[float, float]:
        import torch

        optimizer, scheduler = optimizer or self.optimizer, scheduler or self.scheduler
        head = self.model.get_submodule(self.bundle.head[0])
        head.train()
        order = torch.randperm(len(labels), generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), self.config.batch_size):
            idx = order[start:start + self.config.batch_size]
            if len(idx) == 1 and len(order) > 1:
                continue  # as the image loader does: no batch of one
            seen += len(idx)
            logits = head(feats[idx])
            loss = self.criterion(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == labels[idx]).sum().item()
        return total_loss / seen, correct / seen

    def _probe_head(self, progress) -> float:
        """LP-FT: fit the new head on cached backbone features before any backbone layer trains."""
        import torch

        cfg = self.config
        loader = make_loader(self.splits.train, self.bundle.preprocess.eval_transform(), cfg.batch_size,
                             workers=cfg.workers)
        feats, labels = self._features(loader, progress, "probe features")
        optimizer = torch.optim.AdamW(self.head_params, lr=3e-3, weight_decay=cfg.weight_decay)
        steps = cfg.probe_epochs * math.ceil(len(labels) / cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        generator = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.probe_epochs):
            _, accuracy = self._train_epoch_cached(feats, labels, generator, optimizer, scheduler)
        log.info("head fitted on cached features for %d epochs: train top-1 %.2f%%", cfg.probe_epochs, 100 * accuracy)
        return accuracy

    def _evaluate(self, feats=None, labels=None) -> tuple[np.ndarray, np.ndarray, float]:
        import torch

        self.model.eval()
        with torch.inference_mode():
            if feats is not None:
                logits = self.model.get_submodule(self.bundle.head[0])(feats)
                targets = labels
            else:
                outs, tgts = [], []
                for images, batch_targets in self.val_loader:
                    outs.append(self.model(images))
                    tgts.append(batch_targets)
                logits, targets = torch.cat(outs), torch.cat(tgts)
            loss = torch.nn.functional.cross_entropy(logits, targets).item()
        return logits.float().numpy(), targets.numpy(), loss

    def run(self, fresh: bool) -> FinetuneResult:
        """Train until ``epochs`` (or early stopping); the caller holds the run's finetune stage lock."""
        cfg = self.config
        if fresh:
            self.manifest.begin(STAGE, cfg.to_dict())
            self.manifest.add_artifact(STAGE, self.run_dir / SPLIT_NAME)
            self.manifest.save()
        else:
            self.manifest.reopen(STAGE, {name: getattr(cfg, name) for name in RESUMABLE})
        start = time.perf_counter()
        elapsed_before = sum(h["time_s"] for h in self.history)
        try:
            with progress_bar(self.progress) as progress:
                self._epochs(progress, fresh)
        except BaseException as exc:
            if self.staging is not None and not self.staging.promoted:
                raise  # nothing worth keeping: the caller discards the staging folder
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.manifest.fail(STAGE, f"{type(exc).__name__}: {exc}"[:300], status)
            log.error("fine-tuning %s; resume with: edgetl finetune --resume %s", status, self.run_dir)
            raise
        return self._finish(time.perf_counter() - start + elapsed_before)

    def _epochs(self, progress, fresh: bool) -> None:
        import torch

        cfg = self.config
        train_feats = val_feats = None
        if self.cached:
            loader = make_loader(self.splits.train, self.bundle.preprocess.eval_transform(), cfg.batch_size,
                                 workers=cfg.workers)
            train_feats = self._features(loader, progress, "features train")
            val_feats = self._features(self.val_loader, progress, "features val")
        if fresh and cfg.strategy == "gradual" and cfg.probe_epochs:
            self._probe_head(progress)
        epochs_task = progress.add_task("epochs", total=cfg.epochs, completed=self.epoch, status="")
        while self.epoch < cfg.epochs:
            epoch_start = time.perf_counter()
            unfrozen = self._apply_freezing(self.epoch)
            if self.cached:
                generator = torch.Generator().manual_seed(cfg.seed + self.epoch)
                train_loss, train_acc = self._train_epoch_cached(*train_feats, generator)
                logits, labels, val_loss = self._evaluate(*val_feats)
            else:
                task = progress.add_task(f"epoch {self.epoch + 1}", total=len(self.splits.train), status="")
                train_loss, train_acc = self._train_epoch(progress, task)
                progress.remove_task(task)
                logits, labels, val_loss = self._evaluate()
            val_top1 = float((logits.argmax(1) == labels).mean())
            self.epoch += 1
            self.history.append({"epoch": self.epoch, "train_loss": round(train_loss, 5),
                                 "train_top1": round(train_acc, 5), "val_loss": round(val_loss, 5),
                                 "val_top1": round(val_top1, 5), "lr": self.optimizer.param_groups[0]["lr"],
                                 "unfrozen_groups": unfrozen, "time_s": round(time.perf_counter() - epoch_start, 2)})
            improved = self._end_epoch(val_top1)
            progress.update(epochs_task, advance=1,
                            status=f"val top-1 {100 * val_top1:.1f}% (best {100 * self.best:.1f}%)")
            if not improved and cfg.patience and self.bad_epochs >= cfg.patience:
                log.info("early stopping: no improvement for %d epochs", cfg.patience)
                break

    def _end_epoch(self, val_top1: float) -> bool:
        """Checkpoints, then (first epoch of a new run) move the run into place; True when val improved."""
        improved = val_top1 > self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = val_top1, self.epoch, 0
            self._save_best()
        else:
            self.bad_epochs += 1
        self._save_training_state()
        if self.staging is not None and not self.staging.promoted:
            self.run_dir = self.manifest.run_dir = self.staging.promote()
        h = self.history[-1]
        log.info("epoch %d/%d  train loss %.3f  val loss %.3f  val top-1 %.2f%%%s  (%.0f s)", self.epoch,
                 self.config.epochs, h["train_loss"], h["val_loss"], 100 * val_top1, " *" if improved else "",
                 h["time_s"])
        return improved

    def _finish(self, wall: float) -> FinetuneResult:
        import torch

        best = torch.load(self.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(best["state_dict"])
        logits, labels, val_loss = self._evaluate()
        metrics = classification_metrics(logits, labels, self.classes)
        metrics.update(val_loss=round(val_loss, 5), best_epoch=self.best_epoch, epochs_run=self.epoch,
                       wall_time_s=round(wall, 1))
        plot_confusion_matrix(metrics["confusion_matrix"], self.classes, self.run_dir / "confusion_matrix.png",
                              title=f"{self.bundle.name} val top-1 {100 * metrics['top1']:.1f}%")
        write_json(self.run_dir / "metrics.json", {"final": metrics, "history": self.history})
        for name in ("checkpoint.pt", "metrics.json", "confusion_matrix.png"):
            self.manifest.add_artifact(STAGE, self.run_dir / name, **({"runtime": "torch", "precision": "fp32",
                                                                     "format": "pytorch"}
                                                                    if name == "checkpoint.pt" else {}))
        self.manifest.stages[STAGE]["history"] = self.history
        self.manifest.finish(STAGE, metrics)
        return FinetuneResult(self.run_dir, metrics, self.history, wall)
