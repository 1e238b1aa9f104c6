"""The training loop: epochs over a model with a loss object, a strategy and callbacks (:mod:`.callbacks`:
checkpoints, moving a new run into place, early stopping). It knows :class:`~.settings.TrainSettings`, not a
command's config, and writes no manifest: its callers run it as a run's stage (:mod:`.stage`)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._console import progress_bar
from .._io import write_json
from ..data import DatasetSplits, make_loader
from ..errors import DatasetError, RunFolderError
from ..metrics import classification_metrics, plot_confusion_matrix
from ..models import load_torch_file
from . import distributed
from .cache import SharedCache, backbone_digest
from .callbacks import BEST, Checkpoints, EarlyStopping, read_state, restart_hint
from .losses import ClassificationLoss
from .schedules import warmup_cosine
from .settings import TrainSettings
from .strategies import Unfreezer, layer_groups, make_optimizer

if TYPE_CHECKING:
    from ..models import ModelBundle

log = logging.getLogger(__name__)
METRICS, CONFUSION = "metrics.json", "confusion_matrix.png"
"""The run files a training writes besides its checkpoints."""


@dataclass
class FinetuneResult:
    run_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


class Trainer:
    """The epoch loop: a model bundle, its data splits, a loss object, a strategy and callbacks (see
    :mod:`.callbacks`; ``should_stop`` ends training after the epoch). ``run_dir`` is where the main process
    (rank 0) writes the run's files when ``settings.checkpoints`` is on (a callback may move it)."""

    def __init__(self, settings: TrainSettings, bundle: ModelBundle, splits: DatasetSplits,
                 run_dir: str | Path | None = None, *, progress: bool = False, loss: Any = None,
                 callbacks: Sequence[Any] = (), cache: SharedCache | None = None) -> None:
        self.settings, self.bundle, self.splits = settings, bundle, splits
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.cache = cache  # features of the frozen backbone, shared with other runs of a search
        self._backbone: str | None = None  # its digest, the cache's key
        self.dist = distributed.current()
        self.is_main = self.dist.is_main
        self.should_stop = False
        self.val_feats: tuple[Any, Any] | None = None
        if settings.sync_bn and self.dist.active:
            bundle.model = distributed.convert_sync_bn(bundle.model)
        self.model = self.train_model = bundle.model  # train_model: under DDP when several processes train
        self._trainable: tuple[bool, ...] | None = None
        self.rank_rngs: list[Any] | None = None  # every rank's RNG states at the last checkpoint (several processes)
        self.classes = splits.classes
        self.head_params = [p for h in bundle.head for p in self.model.get_submodule(h).parameters()]
        self.groups = layer_groups(self.model, bundle.head)
        self.unfreezer = Unfreezer(settings.strategy, self.groups, self.head_params, settings.epochs,
                                   probed_head=bool(settings.probe_epochs))
        self.loss = loss or ClassificationLoss(settings.label_smoothing)
        self.cached = settings.cached
        self._make_loaders()
        self.optimizer = make_optimizer(self.model, self.head_params, strategy=settings.strategy,
                                        optimizer=settings.optimizer, lr=settings.lr,
                                        backbone_lr_scale=settings.backbone_lr_scale, weight_decay=settings.weight_decay)
        warmup = 0 if settings.strategy == "linear-probe" else int(settings.warmup_epochs * self.steps_per_epoch)
        self.scheduler = warmup_cosine(self.optimizer, settings.epochs * self.steps_per_epoch, warmup)
        self.ema = weight_average(self.model, settings.ema)
        self.callbacks = [*([Checkpoints(settings.save_every_epoch)] if settings.checkpoints else []), *callbacks,
                          *([EarlyStopping(settings.patience)] if settings.patience else [])]
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best = -1.0
        self.best_loss = float("inf")
        """Val loss of the best epoch: an epoch that ties on top-1 improves when its val loss is lower."""
        self.best_epoch = -1
        self.bad_epochs = 0

    # -- setup ------------------------------------------------------------------------------
    def _make_loaders(self) -> None:
        settings, spec, splits = self.settings, self.bundle.preprocess, self.splits
        if len(splits.val) < self.dist.world:
            raise DatasetError(f"{len(splits.val)} val image(s) cannot be shared by {self.dist.world} processes: "
                               "use fewer processes or a larger val split")
        self.batch = settings.batch_size // self.dist.world  # --batch-size is the global batch, split over processes
        transform = spec.train_transform(settings.augment and not self.cached, settings.augment_strength)
        self.train_loader = make_loader(splits.train, transform, self.batch, shuffle=True, workers=settings.workers,
                                        seed=settings.seed, shard=(self.dist.rank, self.dist.world))
        self.val_loader = make_loader(self.dist.shard(splits.val), spec.eval_transform(), self.batch,
                                      workers=settings.workers)
        self.steps_per_epoch = len(self.train_loader)

    def _train_mode(self) -> None:
        """Train mode, but BatchNorms of frozen layers (or all, with ``freeze_bn``) keep their statistics."""
        import torch.nn as nn

        self.model.train()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if self.settings.freeze_bn or not any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()

    # -- checkpoints (written by callbacks.Checkpoints) ---------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs to continue bit for bit (``checkpoints/last.pt``)."""
        import torch

        return {**({"rng_ranks": self.rank_rngs} if self.rank_rngs else {}), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "best": self.best, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history,
                "rng": torch.get_rng_state(), "python_rng": random.getstate(),
                **({"ema": self.ema.module.state_dict()} if self.ema is not None else {})}

    def best_checkpoint(self) -> dict[str, Any]:
        """The evaluated model and what loads it (``checkpoint.pt``)."""
        payload = {"state_dict": self.eval_model.state_dict(), "model_name": self.bundle.name,
                   "num_classes": len(self.classes), "classes": self.classes, "epoch": self.epoch,
                   "image_size": self.bundle.preprocess.input_size}
        if self.bundle.architecture is not None:  # a pruned model: channels per layer, to rebuild it
            payload["architecture"] = self.bundle.architecture
        return payload

    @property
    def eval_model(self) -> Any:
        """The weights evaluated and saved: the moving average with ``ema``, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    def _step(self, optimizer, scheduler) -> None:
        optimizer.step()
        scheduler.step()
        if self.ema is not None and optimizer is self.optimizer:  # not the LP-FT head probe
            self.ema.update(self.model, step=self.scheduler.last_epoch)

    def _rank_rngs(self) -> list[Any] | None:
        """Every rank's RNG states (collective; None with one process): a resumed rank continues its own."""
        import torch

        return self.dist.all_gather_object((torch.get_rng_state(), random.getstate())) if self.dist.active else None

    def restore(self) -> None:
        """Continue from the run's ``checkpoints/last.pt`` (read by the one safe loader; a foreign file is refused)."""
        state = read_state(self.run_dir, ema=self.ema is not None)
        path, hint = self.run_dir / "checkpoints" / "last.pt", restart_hint(self.run_dir)
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])  # ema cannot change on resume: it was saved
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError):
            raise RunFolderError(f"{path} does not fit this run's model or optimizer (damaged, or from another "
                                 f"run): {hint}") from None
        try:
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, TypeError):
            raise RunFolderError(f"{self.run_dir}/checkpoints/last.pt holds a learning-rate schedule of an older "
                                 "edgetl that this one cannot continue: fine-tune again with --overwrite") from None
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.best_loss = state.get("best_loss", float("-inf"))  # an older run's: ties never improve, as it ran
        self.bad_epochs, self.history = state["bad_epochs"], state["history"]
        try:
            self._restore_rng(state)
        except (RuntimeError, ValueError, TypeError, KeyError):
            raise RunFolderError(f"{path} holds no usable random-number state (damaged or foreign): {hint}") from None
        log.info("resuming %s after epoch %d (best val top-1 %.2f%% at epoch %d)", self.run_dir, self.epoch,
                 100 * self.best, self.best_epoch)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        import torch

        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == self.dist.world:
            torch_rng, python_rng = ranks[self.dist.rank]
            torch.set_rng_state(torch_rng)
            random.setstate(_as_tuple(python_rng))
        else:
            torch.set_rng_state(state["rng"])
            if "python_rng" in state:
                random.setstate(state["python_rng"])

    # -- features (linear probe) ----------------------------------------------------------------
    def _features(self, loader, progress, label: str):
        """Backbone outputs (head swapped for identity) and labels for every image of ``loader``; from the
        shared cache of a search when another run computed them for the same backbone and images."""
        if self.cache is None or self.dist.active:
            return self._compute_features(loader, progress, label)
        if self._backbone is None:  # every feature pass comes before training: the backbone is as built
            self._backbone = backbone_digest(self.model, self.bundle.head)
        return self.cache.features(self._backbone, self.bundle.preprocess.to_dict(),
                                   list(loader.dataset.samples), lambda: self._compute_features(loader, progress, label))

    def _compute_features(self, loader, progress, label: str):
        import torch
        import torch.nn as nn

        from ..models import get_submodule_parent

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
        return self.dist.gather(torch.cat(feats)), self.dist.gather(torch.cat(labels))  # each rank: its shard

    # -- loops ------------------------------------------------------------------------------
    def _forward_loss(self, images, targets):
        if getattr(self.loss, "needs_inputs", False):  # distillation: the teacher sees the same batch
            images = self.loss.prepare(images, targets)  # mixup, when the loss asks for it
            return self.loss(self.train_model(images), targets, inputs=images)
        return self.loss(self.train_model(images), targets)

    def _wrap(self) -> None:
        """DDP over the parameters that train now: wrapped again when unfreezing changes them."""
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if trainable != self._trainable:
            self.train_model, self._trainable = self.dist.wrap(self.model), trainable

    def _train_epoch(self, progress, task) -> tuple[float, float]:

        self._train_mode()
        self._wrap()
        if hasattr(self.train_loader.sampler, "set_epoch"):  # several processes: DistributedSampler
            self.train_loader.sampler.set_epoch(self.epoch)  # order = f(seed, epoch) on every rank: resumable
        else:
            self.train_loader.generator.manual_seed(self.settings.seed + self.epoch)  # order = f(epoch): resumable
        total_loss, correct, seen = 0.0, 0, 0
        for images, targets in self.train_loader:
            logits, loss = self._forward_loss(images, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._step(self.optimizer, self.scheduler)
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            progress.update(task, advance=len(targets) * self.dist.world, status=f"loss {total_loss / seen:.3f}")
        total_loss, correct, seen = self.dist.sum(total_loss, correct, seen)
        return total_loss / seen, correct / seen

    def _train_epoch_cached(self, feats, labels, generator, optimizer=None, scheduler=None) -> tuple[float, float]:
        import torch

        optimizer, scheduler = optimizer or self.optimizer, scheduler or self.scheduler
        head = self.model.get_submodule(self.bundle.head[0])
        head.train()
        order = torch.randperm(len(labels), generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), self.settings.batch_size):
            idx = order[start:start + self.settings.batch_size]
            if len(idx) == 1 and len(order) > 1:
                continue  # as the image loader does: no batch of one
            seen += len(idx)
            logits = head(feats[idx])
            loss = self.loss.on_logits(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._step(optimizer, scheduler)
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == labels[idx]).sum().item()
        self.dist.sync_module(head)  # every rank trained the head alike on all features: keep rank 0's
        return total_loss / seen, correct / seen

    def _probe_head(self, progress) -> float:
        """LP-FT: fit the new head on cached backbone features before any backbone layer trains."""
        import torch

        cfg = self.settings
        loader = make_loader(self.dist.shard(self.splits.train), self.bundle.preprocess.eval_transform(), self.batch,
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

        model = self.eval_model
        model.eval()
        with torch.inference_mode():
            if feats is not None:
                logits = model.get_submodule(self.bundle.head[0])(feats)
                targets = labels
            else:
                self.dist.sync_module(model, parameters=False)  # rank 0's BatchNorm statistics
                outs, tgts = [], []
                for images, batch_targets in self.val_loader:  # this rank's shard of val, gathered in order
                    outs.append(model(images))
                    tgts.append(batch_targets)
                logits, targets = self.dist.gather(torch.cat(outs)), self.dist.gather(torch.cat(tgts))
            loss = torch.nn.functional.cross_entropy(logits, targets).item()
        return logits.float().numpy(), targets.numpy(), loss

    def run(self, fresh: bool) -> FinetuneResult:
        """Train until ``epochs`` (or a callback stops it); ``fresh``: from the start, else after :meth:`restore`."""
        start = time.perf_counter()
        elapsed_before = sum(h["time_s"] for h in self.history)
        with progress_bar(self.progress and self.is_main) as progress:
            self._epochs(progress, fresh)
        return self._finish(time.perf_counter() - start + elapsed_before)

    def _epochs(self, progress, fresh: bool) -> None:
        import torch

        settings = self.settings
        train_feats = None
        if self.cached:
            loader = make_loader(self.dist.shard(self.splits.train), self.bundle.preprocess.eval_transform(),
                                 self.batch, workers=settings.workers)
            train_feats = self._features(loader, progress, "features train")  # computed once, shared by ranks
            self.val_feats = self._features(self.val_loader, progress, "features val")
        if fresh and settings.strategy == "gradual" and settings.probe_epochs:
            self._probe_head(progress)
        if fresh and settings.start_is_candidate and not self.cached:
            self._start_candidate()
        epochs_task = progress.add_task("epochs", total=settings.epochs, completed=self.epoch, status="")
        while self.epoch < settings.epochs and not self.should_stop:
            epoch_start = time.perf_counter()
            unfrozen = self.unfreezer.apply(self.epoch)
            if self.cached:
                generator = torch.Generator().manual_seed(settings.seed + self.epoch)
                train_loss, train_acc = self._train_epoch_cached(*train_feats, generator)
            else:
                task = progress.add_task(f"epoch {self.epoch + 1}", total=len(self.splits.train), status="")
                train_loss, train_acc = self._train_epoch(progress, task)
                progress.remove_task(task)
            logits, labels, val_loss = self._evaluate(*(self.val_feats if self.cached else ()))
            val_top1 = float((logits.argmax(1) == labels).mean())
            self.epoch += 1
            self.history.append({"epoch": self.epoch, "train_loss": round(train_loss, 5),
                                 "train_top1": round(train_acc, 5), "val_loss": round(val_loss, 5),
                                 "val_top1": round(val_top1, 5), "lr": self.optimizer.param_groups[0]["lr"],
                                 "unfrozen_groups": unfrozen, "time_s": round(time.perf_counter() - epoch_start, 2)})
            self._end_epoch(val_top1, val_loss)
            progress.update(epochs_task, advance=1,
                            status=f"val top-1 {100 * val_top1:.1f}% (best {100 * self.best:.1f}%)")

    def _start_candidate(self) -> None:
        """Epoch 0: the model as given is the best so far (the callbacks save it and move a new run into place)."""
        logits, labels, val_loss = self._evaluate()
        self.best, self.best_loss, self.best_epoch = float((logits.argmax(1) == labels).mean()), val_loss, 0
        log.info("epoch 0 (before training): val loss %.3f  val top-1 %.2f%% *", val_loss, 100 * self.best)
        self._notify({"epoch": 0, "val_loss": round(val_loss, 5), "val_top1": round(self.best, 5), "improved": True})

    def _end_epoch(self, val_top1: float, val_loss: float) -> bool:
        """Best-so-far bookkeeping, then the callbacks. An epoch improves on a higher val top-1, or the same top-1
        at a lower val loss (a flat top-1 curve, as weight averaging gives, keeps the better-fitted epoch and
        does not run out of patience while loss falls)."""
        improved = val_top1 > self.best or (val_top1 == self.best and val_loss < self.best_loss)
        if improved:
            self.best, self.best_loss, self.best_epoch, self.bad_epochs = val_top1, val_loss, self.epoch, 0
        else:
            self.bad_epochs += 1
        h = self.history[-1]
        log.info("epoch %d/%d  train loss %.3f  val loss %.3f  val top-1 %.2f%%%s  (%.0f s)", self.epoch,
                 self.settings.epochs, h["train_loss"], h["val_loss"], 100 * val_top1, " *" if improved else "",
                 h["time_s"])
        self._notify({**h, "improved": improved})
        return improved

    def _notify(self, record: dict[str, Any]) -> None:
        self.rank_rngs = self._rank_rngs()  # collective: every rank, before any checkpoint is written
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
        if self.dist.active:  # a callback on rank 0 (a search's pruner) stops every rank
            self.should_stop = self.dist.broadcast(self.should_stop)

    def _finish(self, wall: float) -> FinetuneResult:
        if self.settings.checkpoints:  # end on the best epoch's weights, as saved
            best = load_torch_file(self.run_dir / BEST) if self.is_main else None
            best = self.dist.broadcast(best)["state_dict"]
            self.model.load_state_dict(best)
            if self.ema is not None:  # the best weights were the average's
                self.ema.module.load_state_dict(best)
        # a linear probe's backbone is frozen: its cached val features still hold, only the head ran again
        logits, labels, val_loss = self._evaluate(*(self.val_feats if self.cached and self.val_feats else ()))
        metrics = classification_metrics(logits, labels, self.classes)
        metrics.update(val_loss=round(val_loss, 5), best_epoch=self.best_epoch, epochs_run=self.epoch,
                       wall_time_s=round(wall, 1))
        if self.is_main and self.settings.checkpoints:
            plot_confusion_matrix(metrics["confusion_matrix"], self.classes, self.run_dir / CONFUSION,
                                  title=f"{self.bundle.name} val top-1 {100 * metrics['top1']:.1f}%")
            write_json(self.run_dir / METRICS, {"final": metrics, "history": self.history})
        return FinetuneResult(self.run_dir, metrics, self.history, wall)


def weight_average(model: Any, decay: float | None) -> Any:
    """timm's weight average (buffers too), its decay warmed up over the first steps; None when off."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay, use_warmup=True)
    for module in ema.module.modules():  # the copy must not feed a distillation loss's feature hooks
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return ema


def _as_tuple(value: Any) -> Any:
    """A Python RNG state read back from a checkpoint (lists where ``random.setstate`` wants tuples)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
