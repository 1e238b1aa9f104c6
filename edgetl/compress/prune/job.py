"""The step loop of ``edgetl prune``: prune the student (a copy of the parent's model, the teacher) in one step
at ``ratio``, or in steps of ``step_ratio`` until a MAC or latency goal is met, repairing each step (least
squares or BatchNorm statistics) and recovering between steps. What it did is the core of the prune report.

Training and timing come from the caller (:mod:`edgetl.prune`): ``recover`` trains the student between
steps, ``latency`` times it on the target; top-1 is :func:`edgetl.evaluate.top1` on the parent's val images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from .counting import standard_macs
from .recovery import FeaturePoint
from .structured import kept_modules, layer_ratio_modules, parse_layer_ratios

if TYPE_CHECKING:
    from ...prune import PruneConfig
    from ...train.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass
class Pruned:
    """What the step loop did: MAC counts before and after, the steps, top-1 along the way."""

    before: dict[str, Any]
    after: dict[str, Any]
    steps: list[dict[str, Any]]
    top1_parent: float
    top1_pruned: float
    top1_repaired: float
    sparsity: dict[str, Any] | None = None


@dataclass
class PruneJob:
    """One pruning of ``student``; ``goal`` (ms or MACs) with ``config.target_latency`` / ``target_macs``."""

    config: PruneConfig
    settings: TrainSettings
    """The recovery's training (its batch size and augmentation serve calibration and the Taylor batch)."""
    teacher: Any
    student: Any
    heads: list[str]
    example: Any
    train: list
    """The parent's training images (calibration, BatchNorm statistics, the Taylor batch)."""
    val: Any
    """The parent's val images (:class:`~edgetl.data.EvalImages`): every top-1 of the report."""
    spec: Any
    recover: Callable[[PruneJob], None]
    """Trains the student between pruning steps."""
    latency: Callable[[Any], float] | None = None
    """Times the student on the target (``target_latency``)."""
    goal: float | None = None
    repair: dict[str, Any] = field(default_factory=dict)
    """How the last pruning step was repaired before training: least squares or BatchNorm statistics."""
    kept: dict[str, list[int]] = field(default_factory=dict)
    """Module name -> the parent's index of each output channel the student kept (all steps so far)."""
    kept_inputs: dict[str, list[int]] = field(default_factory=dict)
    """The same for input channels: which of the parent's features the student's classifier reads."""
    feature_layers: tuple[str, ...] = ()
    """The module names ``config.feature_layers`` matches (resolved once, before any pruning)."""
    calibration: list[Any] | None = None
    masks: Any = None
    """The 2:4 masks kept on the student's weights while it recovers (``sparsity_2_4``)."""

    def run(self) -> Pruned:
        from . import count_macs

        cfg = self.config
        # resolved before any pruning, so a pattern that matches nothing fails before any work
        self.feature_layers = kept_modules(self.student, cfg.feature_layers, "--feature-layers")
        before, parent_top1 = count_macs(self.student, self.example), self.top1(self.teacher)
        steps = self._prune_steps(before)
        after, pruned_top1 = count_macs(self.student, self.example), self.top1(self.student)
        if cfg.ratio is not None:
            self._repair()
        repaired_top1 = self.top1(self.student)
        log.info("pruned: %.1f%% fewer MACs, val top-1 %.2f%% -> %.2f%% (%.2f%% after %s), before recovery",
                 100 * (1 - standard_macs(after) / standard_macs(before)), 100 * parent_top1, 100 * pruned_top1,
                 100 * repaired_top1, self.repair.get("method", "repair"))
        sparsity = self._sparsify() if cfg.sparsity_2_4 else None
        return Pruned(before, after, steps, parent_top1, pruned_top1, repaired_top1, sparsity)

    def top1(self, model: Any) -> float:
        from ...evaluate import top1

        return top1(model, self.val, batch_size=self.settings.batch_size)

    def feature_points(self) -> list[FeaturePoint]:
        """Where feature distillation compares the student with the parent: the classifier's input, then
        each ``feature_layers`` output, with the parent's channels the student kept there."""
        head = self.heads[0]
        return [FeaturePoint(head, "input", self.kept_inputs.get(head)),
                *(FeaturePoint(n, "output", self.kept.get(n)) for n in self.feature_layers)]

    def _prune_steps(self, before: dict[str, Any]) -> list[dict[str, Any]]:
        """One step at ``ratio``, or steps of ``step_ratio`` with short recoveries until the goal."""
        from . import PruneSettings, count_macs

        cfg = self.config
        settings = PruneSettings(ratio=cfg.ratio or cfg.step_ratio, importance=cfg.importance,
                                 global_pruning=cfg.global_pruning, round_to=cfg.round_to,
                                 ignored=kept_modules(self.student, cfg.keep),
                                 layer_ratios=layer_ratio_modules(self.student, parse_layer_ratios(cfg.layer_ratio)))
        loss_fn = self._taylor_loss() if cfg.importance == "taylor" else None
        if cfg.ratio is not None:
            self._step(settings, loss_fn)
            return [{"step": 1, "ratio": cfg.ratio, "macs": standard_macs(count_macs(self.student, self.example))}]
        latency = self.latency if cfg.target_latency else None
        steps, macs = [], standard_macs(before)
        value = latency(self.student) if latency else macs
        while value > self.goal:
            log.info("step %d: removing %.0f%% of the remaining channels (now %.3fG MACs%s)", len(steps) + 1,
                     100 * cfg.step_ratio, macs / 1e9, f", {value:.3f} ms" if latency else "")
            self._step(settings, loss_fn)
            now = standard_macs(count_macs(self.student, self.example))
            if now >= macs * 0.995:  # nothing left to remove without taking out whole layers
                reached = f"{value:.3f} ms on {cfg.target}" if latency else f"{now / 1e9:.3f}G MACs"
                asked = f"--max-latency {cfg.target_latency}" if latency else f"--target-macs {cfg.target_macs}"
                raise ConfigError(f"{asked} cannot be reached without removing whole layers: the closest reachable "
                                  f"is {reached}; ask for that or more")
            macs = now
            self._repair()
            self.recover(self)
            value = latency(self.student) if latency else macs
            steps.append({"step": len(steps) + 1, "macs": macs, "val_top1": self.top1(self.student),
                          **({"latency_ms": value} if latency else {})})
            log.info("step %d: %.3fG MACs%s, val top-1 %.2f%%", len(steps), macs / 1e9,
                     f", {value:.3f} ms on {cfg.target}" if latency else "", 100 * steps[-1]["val_top1"])
        return steps

    def _step(self, settings: Any, loss_fn: Any) -> None:
        """One pruning step; the kept channels are recorded for the least squares."""
        from . import StructuredPruner
        from .repair import compose_kept, reconstruction_importance

        importance = (reconstruction_importance(self.student, self._calibration())
                      if settings.importance == "reconstruction" else None)
        pruner = StructuredPruner(self.student, self.example, settings, self.heads, importance=importance)
        pruner.step(loss_fn)
        self.kept = compose_kept(self.kept, pruner.kept_outputs)
        self.kept_inputs = compose_kept(self.kept_inputs, pruner.kept_inputs)

    def _calibration(self) -> list[Any]:
        """The calibration batches (built once): ``calibration_views`` views of every training image."""
        from .repair import calibration_batches

        if self.calibration is None:
            self.calibration = calibration_batches(self.train, self.spec, self.config.calibration_views,
                                                   self.settings.batch_size, seed=self.config.seed)
        return self.calibration

    def _repair(self) -> None:
        """Right after a pruning step: re-solve the layers by least squares (see
        :mod:`~edgetl.compress.prune.reconstruct`), or, when none qualifies (or ``reconstruct`` is off),
        re-estimate BatchNorm statistics. The first keeps the teacher's statistics, which its classifier was
        trained with; re-estimating them on a few hundred images would move every feature."""
        import torch

        from . import reconstruct_layers, reconstructable_layers
        from ...data import iter_batches
        from .reconstruct import plan_layers
        from .repair import recalibrate_bn

        cfg, heads = self.config, self.heads
        if cfg.reconstruct and (reconstructable_layers(self.student, self.teacher) or plan_layers(
                self.student, self.teacher, scope=cfg.reconstruct_scope, kept_outputs=self.kept, skip=heads)):
            batches = self._calibration()
            report = reconstruct_layers(self.student, self.teacher, lambda: iter(batches), scope=cfg.reconstruct_scope,
                                        kept_outputs=self.kept, skip=heads, progress=log.info)
            self.repair = {"method": "least squares", "images": sum(len(b) for b in batches), **report}
        else:
            images = iter_batches(self.train, self.spec, self.settings.batch_size)
            recalibrate_bn(self.student, (torch.from_numpy(batch) for batch, _ in images))
            self.repair = {"method": "BatchNorm statistics"}

    def _taylor_loss(self) -> Any:
        """Taylor importance's loss: cross-entropy on one training batch, augmented as recovery trains."""
        import torch.nn.functional as F

        from ...data import make_loader

        transform = self.spec.train_transform(self.settings.augment, self.settings.augment_strength)
        loader = make_loader(self.train, transform, self.settings.batch_size, shuffle=True, workers=0,
                             seed=self.config.seed)
        images, targets = next(iter(loader))
        return lambda model: F.cross_entropy(model(images), targets)

    def _sparsify(self) -> dict[str, Any]:
        from . import apply_semi_structured_2_4, keep_masks, sparsity_2_4_fraction

        masks = apply_semi_structured_2_4(self.student, self.heads)
        self.masks = keep_masks(self.student, masks)
        return {"layers": len(masks), "fraction_2_4": sparsity_2_4_fraction(self.student, ignored=self.heads)}
