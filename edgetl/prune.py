"""``edgetl prune RUN``: remove whole channels (Torch-Pruning), then recover accuracy by fine-tuning with
knowledge distillation from the unpruned model. The result is a new run whose parent is RUN.

The pruned run is an ordinary run folder: its ``checkpoint.pt`` carries an architecture record (channels
per layer) beside the state dict, so it loads with ``weights_only=True`` wherever edgetl loads a
checkpoint, and export, every target, bench and packaging work on it unchanged. Its frozen split is the
parent's, so accuracies compare image for image.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .compress.prune.counting import prune_report, standard_macs
from .compress.prune.reconstruct import SCOPES
from .compress.prune.structured import PruneSettings, kept_modules, layer_ratio_modules, parse_layer_ratios
from .compress.prune.recovery import distillation
from .errors import ConfigError, RunFolderError

log = logging.getLogger(__name__)
STAGE = "prune"
IMPORTANCES = PruneSettings.importances


@dataclass
class PruneConfig:
    """How much to prune, how, and how to recover."""

    ratio: float | None = None
    """Channel pruning ratio in (0, 1): 0.4 removes 40% of the channels of every prunable layer."""
    target_macs: str | None = None
    """Prune in steps until the model has at most this many MACs (e.g. 0.2G, 150M), recovering between steps."""
    target_latency: str | None = None
    """Prune in steps until batch-1 latency on --target (its own runtime, its default precision) is at most this (e.g. 0.6ms)."""
    target: str = "intel-cpu"
    """Target profile whose runtime measures --target-latency."""
    step_ratio: float = 0.15
    """With --target-macs: channel ratio removed per step (of what is left)."""
    importance: str = "reconstruction"
    """Channel importance: reconstruction (drop the channels the consuming layer can best do without once
    re-solved by least squares; needs no labels), magnitude (L2 of weights), taylor (weight x gradient on a
    training batch) or lamp."""
    layer_ratio: tuple[str, ...] | dict[str, float] = ()
    """Another ratio for some modules, NAME=RATIO (a name or pattern; a block's name covers its layers; later
    ones win), e.g. ``conv_head=0.3`` or ``'blocks.5.*=0.5'``; with --ratio only."""
    global_pruning: bool = False
    """Rank channels across layers (uneven ratios) instead of the same ratio in every layer."""
    round_to: int | None = 16
    """Round channel counts to a multiple of this (INT8 kernels want multiples of 16; 1: no rounding)."""
    keep: tuple[str, ...] = ()
    """Modules kept whole besides the classifier: names or patterns (``conv_stem``, ``blocks.*.*.conv_pwl``
    keeps an inverted-residual network's residual width and prunes only its expanded channels)."""
    epochs: int = 20
    """Recovery fine-tuning epochs after the last pruning step (at least 1); the repaired model is epoch 0,
    so recovery keeps it unless an epoch beats it on val."""
    step_epochs: int = 2
    """Recovery epochs between pruning steps (iterative mode)."""
    lr: float = 0.001
    """Recovery learning rate (AdamW, warm-up + cosine)."""
    temperature: float = 4.0
    """Distillation temperature."""
    alpha: float = 0.7
    """Weight of the distillation loss (1 - alpha: cross-entropy on the labels)."""
    feature_weight: float = 0.0
    """Weight of feature distillation: the relative squared error of the classifier's input (pre-logit features)
    against the parent's. A 2-class task's logits carry one number per image; its features carry hundreds."""
    feature_layers: tuple[str, ...] = ()
    """With --feature-weight, also match these modules' outputs (names or patterns, e.g. an inverted-residual
    net's ``blocks.*.*.conv_pwl``, kept whole): block-by-block targets where the classifier's input is one."""
    mixup: float = 0.0
    """Mix recovery batches (Beta(mixup, mixup) weights; 0: off): the parent labels every mixed image, so a
    small training set gives new inputs at every epoch."""
    augment_strength: float | None = None
    """How hard recovery distorts its training images, 0-2 (default: the parent run's): the parent labels each
    distorted view, so stronger crops and colour jitter teach the pruned model on more of its function."""
    ema: float | None = None
    """Evaluate and keep an exponential moving average of the recovery's weights (largest decay per step, e.g.
    0.98): a steadier val top-1 to stop on and keep. Off by default."""
    patience: int | None = 6
    """Stop recovery after this many epochs without a better val top-1 (or the same at a lower val loss; 0: never)."""
    batch_size: int | None = None
    """Recovery batch size (default: the parent run's)."""
    reconstruct: bool = True
    """Re-solve the layers that lost input channels but kept their outputs (least squares on the training
    images, no labels, no training) before recovery; otherwise only BatchNorm statistics are re-estimated."""
    reconstruct_scope: str = "inputs"
    """Layers the least squares re-solves: inputs (those that lost input channels and kept their outputs) or
    all (every conv / linear layer after the first pruned one, at the channels it kept; depthwise convs
    channel by channel: closer to the parent's features, about 3x slower)."""
    calibration_views: int = 1
    """Views of each training image the least squares fits on: the image as evaluated, then random crops and
    flips (at most 1000 images in all)."""
    sparsity_2_4: bool = False
    """Also make weights 2:4 semi-structured sparse (TensorRT sparse kernels on Ampere/Orin), kept during recovery."""
    output: str | None = None
    """The new run folder (default: PARENT-pruned beside the parent)."""
    seed: int = 0
    """Seed for recovery training."""
    workers: int = 2
    """Data-loading worker processes for recovery."""

    def __post_init__(self) -> None:
        from .config import check_fields

        check_fields(self)  # types first: keep: conv_head is one name, not nine letters
        goals = [g for g in (self.target_macs, self.target_latency) if g is not None]
        if self.ratio is None and not goals:
            self.ratio = 0.4
        if (self.ratio is not None) + len(goals) > 1:
            raise ConfigError("give one of --ratio, --target-macs and --target-latency")
        if self.target_latency is not None:
            parse_ms(self.target_latency)
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"--ratio is the fraction of channels to remove, in (0, 1) exclusive; got {self.ratio}")
        if not 0 < self.step_ratio < 1:
            raise ConfigError(f"--step-ratio must be in (0, 1), got {self.step_ratio}")
        if self.target_macs is not None:
            parse_macs(self.target_macs)
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"--importance must be one of {', '.join(IMPORTANCES)}, not {self.importance!r}")
        if self.epochs < 1 or self.step_epochs < 0:
            raise ConfigError("--epochs must be at least 1 and --step-epochs cannot be negative")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ConfigError(f"--temperature must be > 0 and --alpha in [0, 1], got {self.temperature}, {self.alpha}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"--ema is a decay in (0, 1), got {self.ema}")
        if self.augment_strength is not None and not 0 <= self.augment_strength <= 2:
            raise ConfigError(f"--augment-strength must be in [0, 2], got {self.augment_strength}")
        if self.feature_weight < 0 or self.mixup < 0:
            raise ConfigError(f"--feature-weight and --mixup cannot be negative, got {self.feature_weight}, {self.mixup}")
        if self.reconstruct_scope not in SCOPES:
            raise ConfigError(f"--reconstruct-scope must be one of {', '.join(SCOPES)}, not {self.reconstruct_scope!r}")
        if self.calibration_views < 1:
            raise ConfigError(f"--calibration-views must be at least 1, got {self.calibration_views}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"--round-to must be at least 1, got {self.round_to}")
        self.keep, self.feature_layers = tuple(self.keep or ()), tuple(self.feature_layers or ())
        self.layer_ratio = tuple(f"{n}={r}" for n, r in parse_layer_ratios(self.layer_ratio))
        if self.layer_ratio and self.ratio is None:
            raise ConfigError("--layer-ratio sets final per-layer ratios: use it with --ratio, not with a target")


def parse_macs(text: str) -> float:
    """``0.2G`` / ``150M`` / ``2e8`` -> MACs."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([KMG]?)\s*(MACs?)?\s*", str(text), flags=re.IGNORECASE)
    try:
        value = float(match.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[match.group(2).upper()]
    except (AttributeError, ValueError):
        raise ConfigError(f"--target-macs takes a number of MACs such as 0.2G or 150M, not {text!r}") from None
    if value <= 0:
        raise ConfigError(f"--target-macs must be positive, got {text!r}")
    return value


def parse_ms(text: str) -> float:
    """``0.6ms`` / ``0.6`` -> milliseconds."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(ms)?\s*", str(text), flags=re.IGNORECASE)
    try:
        value = float(match.group(1))
    except (AttributeError, ValueError):
        raise ConfigError(f"--target-latency takes milliseconds such as 0.6ms, not {text!r}") from None
    if value <= 0:
        raise ConfigError(f"--target-latency must be positive, got {text!r}")
    return value


@dataclass
class PruneResult:
    run_dir: Path
    parent: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def prune(run_dir: str | Path, config: PruneConfig | None = None, *, overwrite: bool = False,
          progress: bool = True) -> PruneResult:
    """Prune ``run_dir``'s float model and recover it into a new child run (see the module docstring)."""
    import torch

    from .finetune import _set_threads
    from .run.lock import StageLock
    from .run.newrun import RunStaging, check_output

    config = config or PruneConfig()
    parent = Path(run_dir)
    job = _Job.load(parent, config)
    output = Path(config.output) if config.output else parent.resolve().parent / f"{parent.resolve().name}-pruned"
    child_dir = check_output(output, [Path(job.recovery.data)], overwrite=overwrite)
    if child_dir == parent.resolve():
        raise ConfigError("--output is the parent run: a pruned model is written to a new run")
    _set_threads(job.recovery.threads)
    torch.manual_seed(config.seed)
    staging = RunStaging(child_dir)
    try:
        with StageLock(staging.path, "finetune"):
            return job.run(staging, progress)
    finally:
        staging.discard()  # nothing is left behind when pruning or the first recovery epoch fails


def _check_parent(run_dir: Path) -> Any:
    from .run.integrity import require_current
    from .run.manifest import Manifest, is_run_folder
    from .run.stage import verify_inputs

    if not is_run_folder(run_dir):
        raise RunFolderError(f"{run_dir} is not an edgetl run folder (no edgetl.json): prune a fine-tuned run")
    manifest = Manifest.load(run_dir)
    if not manifest.completed("finetune") or not (run_dir / "checkpoint.pt").is_file():
        raise RunFolderError(f"{run_dir} has no finished fine-tuning checkpoint to prune: run `edgetl finetune` first")
    require_current(manifest, "finetune")
    return manifest, verify_inputs(manifest, ["checkpoint.pt"])


@dataclass
class _Job:
    """One pruning job: the parent's model (teacher) and data, the student being pruned, the report."""

    parent: Any
    """The parent's :class:`~edgetl.run.manifest.Manifest`."""
    inputs: dict[str, str]
    config: PruneConfig
    recovery: Any
    """The :class:`~edgetl.finetune.FinetuneConfig` recovery trains with (the parent's, full strategy)."""
    teacher: Any
    student: Any
    splits: Any
    example: Any
    report: dict[str, Any] = field(default_factory=dict)
    repair: dict[str, Any] = field(default_factory=dict)
    """How the last pruning step was repaired before training: least squares or BatchNorm statistics."""
    kept: dict[str, list[int]] = field(default_factory=dict)
    """Module name -> the parent's index of each output channel the student kept (all steps so far)."""
    kept_inputs: dict[str, list[int]] = field(default_factory=dict)
    """The same for input channels: which of the parent's features the student's classifier reads."""
    feature_layers: tuple[str, ...] = ()
    """The module names ``config.feature_layers`` matches (resolved once, before any pruning)."""
    calibration: list[Any] | None = None

    @classmethod
    def load(cls, parent_dir: Path, config: PruneConfig) -> _Job:
        import copy

        import torch

        from .finetune import FinetuneConfig, _resumed_splits
        from .models import load_run_model

        manifest, inputs = _check_parent(parent_dir)
        teacher, _ = load_run_model(parent_dir)
        recorded = FinetuneConfig.from_dict(manifest.stage("finetune")["options"])
        strength = recorded.augment_strength if config.augment_strength is None else config.augment_strength
        recovery = FinetuneConfig.from_dict({
            **recorded.to_dict(), "strategy": "full", "epochs": config.epochs, "lr": config.lr, "warmup_epochs": 1, "backbone_lr_scale": 1.0,
            "patience": config.patience or None, "seed": config.seed, "workers": config.workers,
            "freeze_bn": config.reconstruct, "augment_strength": strength, "ema": config.ema,
            "batch_size": config.batch_size or recorded.batch_size, "probe_epochs": 0, "cache_features": False})
        splits = _resumed_splits(manifest, recovery)
        size = manifest.preprocessing.get("input_size") or manifest.model.get("input_size")
        example = torch.zeros(1, 3, *(size if isinstance(size, (list, tuple)) else (size, size)))
        return cls(manifest, inputs, config, recovery, teacher, copy.deepcopy(teacher), splits, example)

    # -- the job ------------------------------------------------------------------------------
    def run(self, staging: Any, progress: bool) -> PruneResult:
        from .compress.prune import architecture_record, count_macs
        from .models import ModelBundle
        from .preprocessing import PreprocessSpec
        from .run import create_child
        from .train.trainer import Trainer

        cfg, heads = self.config, list(self.parent.model["head"])
        # resolved before any pruning, so a pattern that matches nothing fails before any work
        self.feature_layers = kept_modules(self.student, cfg.feature_layers, "--feature-layers")
        before, parent_top1 = count_macs(self.student, self.example), self._top1(self.teacher)
        steps = self._prune_steps(heads, before)
        after, pruned_top1 = count_macs(self.student, self.example), self._top1(self.student)
        if cfg.ratio is not None:
            self._repair()
        repaired_top1 = self._top1(self.student)
        log.info("pruned: %.1f%% fewer MACs, val top-1 %.2f%% -> %.2f%% (%.2f%% after %s), before recovery",
                 100 * (1 - standard_macs(after) / standard_macs(before)), 100 * parent_top1, 100 * pruned_top1,
                 100 * repaired_top1, self.repair.get("method", "repair"))
        sparsity = self._sparsify(heads) if cfg.sparsity_2_4 else None
        record = {**self.parent.model, "parameters": after["params"],
                  "pruned": {"parent": str(self.parent.run_dir.resolve()), "macs": standard_macs(after)}}
        # the parent's checkpoint is the parent's file: the lineage records it, not this run's stage inputs
        child = create_child(self.parent.run_dir, staging.path, stage=STAGE, model=record, inputs=self.inputs)
        child.begin(STAGE, {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()})
        child.save()
        bundle = ModelBundle(model=self.student, name=self.parent.model["name"],
                             preprocess=PreprocessSpec.from_dict(self.parent.preprocessing), head=heads,
                             pretrained=f"pruned:{self.parent.run_dir.name}", num_classes=len(self.parent.classes),
                             architecture=architecture_record(self.student))
        points = self._feature_points()
        loss = distillation(self.teacher, self.student, asdict(cfg), points, self.recovery.label_smoothing)
        trainer = Trainer(self.recovery, bundle, self.splits, child, progress=progress, staging=staging, loss=loss,
                          start_is_candidate=True)
        try:
            result = trainer.run(fresh=True)
        except BaseException as exc:
            if staging.promoted:
                from .run.stage import failure_reason

                child.fail(STAGE, failure_reason(exc))
            raise
        self.report = prune_report(before, after, (parent_top1, pruned_top1, repaired_top1, result.metrics["top1"]),
                                   steps, sparsity, trainer.run_dir / "checkpoint.pt", self.parent.run_dir / "checkpoint.pt")
        self.report.update(repair=self.repair, classifier_inputs_kept=points[0][2], feature_points=points)
        child.finish(STAGE, self.report)
        return PruneResult(trainer.run_dir, self.parent.run_dir, self.report)

    def _prune_steps(self, heads: list[str], before: dict[str, Any]) -> list[dict[str, Any]]:
        """One step at ``ratio``, or steps of ``step_ratio`` with short recoveries until ``target_macs``."""
        from .compress.prune import PruneSettings, count_macs

        cfg = self.config
        settings = PruneSettings(ratio=cfg.ratio or cfg.step_ratio, importance=cfg.importance,
                                 global_pruning=cfg.global_pruning, round_to=cfg.round_to,
                                 ignored=kept_modules(self.student, cfg.keep),
                                 layer_ratios=layer_ratio_modules(self.student, parse_layer_ratios(cfg.layer_ratio)))
        loss_fn = self._taylor_loss() if cfg.importance == "taylor" else None
        if cfg.ratio is not None:
            self._step(settings, heads, loss_fn)
            return [{"step": 1, "ratio": cfg.ratio, "macs": standard_macs(count_macs(self.student, self.example))}]
        latency = self._latency if cfg.target_latency else None
        goal = parse_ms(cfg.target_latency) if latency else parse_macs(cfg.target_macs)
        steps, macs = [], standard_macs(before)
        value = latency() if latency else macs
        while value > goal:
            log.info("step %d: removing %.0f%% of the remaining channels (now %.3fG MACs%s)", len(steps) + 1,
                     100 * cfg.step_ratio, macs / 1e9, f", {value:.3f} ms" if latency else "")
            self._step(settings, heads, loss_fn)
            now = standard_macs(count_macs(self.student, self.example))
            if now >= macs * 0.995:  # nothing left to remove without taking out whole layers
                reached = f"{value:.3f} ms on {cfg.target}" if latency else f"{now / 1e9:.3f}G MACs"
                asked = f"--target-latency {cfg.target_latency}" if latency else f"--target-macs {cfg.target_macs}"
                raise ConfigError(f"{asked} cannot be reached without removing whole layers: the closest reachable "
                                  f"is {reached}; ask for that or more")
            macs = now
            self._repair()
            self._recover(cfg.step_epochs)
            value = latency() if latency else macs
            steps.append({"step": len(steps) + 1, "macs": macs, "val_top1": self._top1(self.student),
                          **({"latency_ms": value} if latency else {})})
            log.info("step %d: %.3fG MACs%s, val top-1 %.2f%%", len(steps), macs / 1e9,
                     f", {value:.3f} ms on {cfg.target}" if latency else "", 100 * steps[-1]["val_top1"])
        return steps

    def _step(self, settings: Any, heads: list[str], loss_fn: Any) -> None:
        """One pruning step; the kept channels are recorded for the least squares."""
        from .compress.prune import StructuredPruner
        from .compress.prune.repair import compose_kept, reconstruction_importance

        importance = (reconstruction_importance(self.student, self._calibration())
                      if settings.importance == "reconstruction" else None)
        pruner = StructuredPruner(self.student, self.example, settings, heads, importance=importance)
        pruner.step(loss_fn)
        self.kept = compose_kept(self.kept, pruner.kept_outputs)
        self.kept_inputs = compose_kept(self.kept_inputs, pruner.kept_inputs)

    def _calibration(self) -> list[Any]:
        """The calibration batches (built once): ``calibration_views`` views of every training image."""
        from .compress.prune.repair import calibration_batches
        from .preprocessing import PreprocessSpec

        if self.calibration is None:
            self.calibration = calibration_batches(
                self.splits.train, PreprocessSpec.from_dict(self.parent.preprocessing), self.config.calibration_views,
                self.recovery.batch_size, seed=self.config.seed)
        return self.calibration

    def _latency(self) -> float:
        """Batch-1 p50 of the student built for ``config.target`` by its own toolchain (default precision;
        INT8 calibrated on 32 training images: enough for a latency figure, not for the accuracy one)."""
        import tempfile

        from .build import _latency_p50
        from .data import EvalImages
        from .export import ExportConfig, torch_to_onnx
        from .preprocessing import PreprocessSpec
        from .profiles import load_target
        from .toolchains import get_toolchain

        profile = load_target(self.config.target)
        precision, toolchain = profile.default_precision, get_toolchain(profile.toolchain)
        spec = PreprocessSpec.from_dict(self.parent.preprocessing)
        with tempfile.TemporaryDirectory(prefix="edgetl-prune-") as tmp:
            path = Path(tmp) / "model.onnx"
            torch_to_onnx(self.student.eval(), path, spec.input_size, ExportConfig())
            model = toolchain.convert(path)
            if precision == "int8":
                from .compress.quantize import get_backend

                backend = get_backend(toolchain.quantizer)
                model = backend.quantize(model, self.splits.train[:32], spec,
                                         backend.settings(profile.quantization, f"{profile.name}.yaml"))
            runner = toolchain.runner(model, toolchain.device(profile), toolchain.runner_options(profile, precision))
            try:
                return _latency_p50(runner, EvalImages(self.splits.val[:1], spec)[:1], 50) or 0.0
            finally:
                runner.close()

    def _feature_points(self) -> list[tuple[str, str, list[int] | None]]:
        """Where feature distillation compares the student with the parent: the classifier's input, then
        each ``feature_layers`` output, with the parent's channels the student kept there."""
        head = self.parent.model["head"][0]
        return [(head, "input", self.kept_inputs.get(head)),
                *((n, "output", self.kept.get(n)) for n in self.feature_layers)]

    def _sparsify(self, heads: list[str]) -> dict[str, Any]:
        from .compress.prune import apply_semi_structured_2_4, keep_masks, sparsity_2_4_fraction

        masks = apply_semi_structured_2_4(self.student, heads)
        self._mask_handle = keep_masks(self.student, masks)
        return {"layers": len(masks), "fraction_2_4": sparsity_2_4_fraction(self.student, ignored=heads)}

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, train: bool, samples: list | None = None) -> Any:
        from .data import make_loader
        from .preprocessing import PreprocessSpec

        spec = PreprocessSpec.from_dict(self.parent.preprocessing)
        samples = samples if samples is not None else (self.splits.train if train else self.splits.val)
        transform = spec.train_transform(self.recovery.augment, self.recovery.augment_strength) if train else spec.eval_transform()
        return make_loader(samples, transform, self.recovery.batch_size, shuffle=train, workers=0,
                           seed=self.config.seed)

    def _top1(self, model: Any) -> float:
        import torch

        model.eval()
        correct = seen = 0
        with torch.inference_mode():
            for images, targets in self._loader(train=False):
                correct += int((model(images).argmax(1) == targets).sum())
                seen += len(targets)
        return correct / max(seen, 1)

    def _repair(self) -> None:
        """Right after a pruning step: re-solve the layers by least squares (see
        :mod:`~edgetl.compress.prune.reconstruct`), or, when none qualifies (or ``reconstruct`` is off),
        re-estimate BatchNorm statistics. The first keeps the teacher's statistics, which its classifier was
        trained with; re-estimating them on a few hundred images would move every feature."""
        from .compress.prune import reconstruct_layers, reconstructable_layers
        from .compress.prune.reconstruct import plan_layers
        from .compress.prune.repair import recalibrate_bn

        cfg, heads = self.config, list(self.parent.model["head"])
        if cfg.reconstruct and (reconstructable_layers(self.student, self.teacher) or plan_layers(
                self.student, self.teacher, scope=cfg.reconstruct_scope, kept_outputs=self.kept, skip=heads)):
            batches = self._calibration()
            report = reconstruct_layers(self.student, self.teacher, lambda: iter(batches), scope=cfg.reconstruct_scope,
                                        kept_outputs=self.kept, skip=heads, progress=log.info)
            self.repair = {"method": "least squares", "images": sum(len(b) for b in batches), **report}
        else:
            recalibrate_bn(self.student, (images for images, _ in self._loader(train=False, samples=self.splits.train)))
            self.repair = {"method": "BatchNorm statistics"}

    def _taylor_loss(self) -> Any:
        import torch.nn.functional as F

        images, targets = next(iter(self._loader(train=True)))
        return lambda model: F.cross_entropy(model(images), targets)

    def _recover(self, epochs: int) -> None:
        """Short in-memory distillation between pruning steps (no checkpoints; the final recovery writes them)."""
        import torch

        if not epochs:
            return
        loss = distillation(self.teacher, self.student, asdict(self.config), self._feature_points())
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=self.config.lr)
        self.student.train()
        if self.config.reconstruct:  # BatchNorm keeps the teacher's statistics, as in the final recovery
            for module in self.student.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        for epoch in range(epochs):
            total = seen = 0
            for images, targets in self._loader(train=True):
                images = loss.prepare(images, targets)
                _, value = loss(self.student(images), targets, inputs=images)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                total, seen = total + value.item() * len(targets), seen + len(targets)
            log.info("  recovery epoch %d/%d: distillation loss %.3f", epoch + 1, epochs, total / max(seen, 1))
        loss.close()


def update_report(manifest: Any, result: Any) -> None:
    """After a resumed recovery: the prune report's recovered top-1."""
    report = dict(manifest.stage(STAGE).get("metrics") or {})
    top1 = result.metrics["top1"]
    report.update(top1_recovered=top1, drop_points_vs_parent=round(100 * (report.get("top1_parent", top1) - top1), 4))
    manifest.finish(STAGE, report)
