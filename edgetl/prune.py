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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .compress.prune.counting import prune_report
from .compress.prune.reconstruct import SCOPES
from .compress.prune.recovery import FeaturePoint, distillation
from .compress.prune.structured import PruneSettings, kept_modules, parse_layer_ratios  # noqa: F401  (kept_modules: public)
from .errors import ConfigError, RunFolderError
from .run.keys import FINETUNE, PRUNE
from .train.settings import TrainSettings, recorded_settings

log = logging.getLogger(__name__)
IMPORTANCES = PruneSettings.importances


@dataclass
class PruneConfig:
    """How much to prune, how, and how to recover."""

    ratio: float | None = None
    """Channel pruning ratio in (0, 1): 0.4 removes 40% of the channels of every prunable layer."""
    target_macs: str | None = None
    """Prune in steps until the model has at most this many MACs (e.g. 0.2G, 150M), recovering between steps."""
    target_latency: str | None = None
    """Prune in steps until batch-1 latency on --latency-target (its runtime, its default precision) is at most this
    (e.g. 0.6ms)."""
    target: str = "intel-cpu"
    """Target profile whose runtime measures --max-latency."""
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
            raise ConfigError("give one of --ratio, --target-macs and --max-latency")
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

    def to_dict(self) -> dict[str, Any]:
        """What the pruned run's prune stage records as its options."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recorded prune options") -> PruneConfig:
        """The config from a mapping (a pruned run's recorded options): every key a field, every value its type."""
        from .config import config_from_dict

        return config_from_dict(cls, data, source)

    def recovery_options(self, trained: Mapping[str, Any]) -> dict[str, Any]:
        """What the recovery's ``finetune`` stage records as its options: the parent's (``trained``, its
        recorded finetune options), turned into a full fine-tune at this config's pace, seed and workers."""
        strength = recorded_settings(trained).augment_strength if self.augment_strength is None else self.augment_strength
        return {**trained, "strategy": "full", "epochs": self.epochs, "lr": self.lr, "warmup_epochs": 1,
                "backbone_lr_scale": 1.0, "patience": self.patience or None, "seed": self.seed,
                "workers": self.workers, "freeze_bn": self.reconstruct, "augment_strength": strength, "ema": self.ema,
                "batch_size": self.batch_size or trained["batch_size"], "probe_epochs": 0, "cache_features": False}

    def step_settings(self, recovery: TrainSettings) -> TrainSettings | None:
        """The short in-memory recovery between pruning steps: the final recovery's for ``step_epochs``, with
        no checkpoints, weight average or early stopping (None: no training between steps)."""
        if not self.step_epochs:
            return None
        return replace(recovery, epochs=self.step_epochs, patience=None, ema=None, start_is_candidate=False,
                       checkpoints=False, save_every_epoch=False)


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
        raise ConfigError(f"--max-latency takes milliseconds such as 0.6ms, not {text!r}") from None
    if value <= 0:
        raise ConfigError(f"--max-latency must be positive, got {text!r}")
    return value


@dataclass
class PruneResult:
    run_dir: Path
    parent: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def prune(run_dir: str | Path, config: PruneConfig | None = None, *, overwrite: bool = False,
          progress: bool = True, verify: bool = True) -> PruneResult:
    """Prune ``run_dir``'s float model and recover it into a new child run (see the module docstring).
    The parent's checkpoint is checked against its recorded sha256 (``verify=False``: used anyway)."""
    import torch

    from .run.lock import StageLock
    from .run.newrun import RunStaging, check_output
    from .train.distributed import set_threads

    config = config or PruneConfig()
    if config.target_latency is not None:  # the target's runtime must be here: refused before any work
        from .tune.latency import check_latency_target

        check_latency_target(config.target, None)
    parent = _Parent.load(Path(run_dir), config, verify)
    output = Path(config.output) if config.output else parent.run_dir.resolve().parent / f"{parent.run_dir.resolve().name}-pruned"
    child_dir = check_output(output, [Path(parent.trained["data"])], overwrite=overwrite)
    if child_dir == parent.run_dir.resolve():
        raise ConfigError("--output is the parent run: a pruned model is written to a new run")
    set_threads(parent.settings.threads)
    torch.manual_seed(config.seed)
    staging = RunStaging(child_dir)
    try:
        with StageLock(staging.path, FINETUNE) as lock:
            return _prune_into(staging, lock, parent, config, progress)
    finally:
        staging.discard()  # nothing is left behind when pruning or the first recovery epoch fails


@dataclass
class _Parent:
    """The run being pruned: its manifest, model (the teacher), data and how it was trained."""

    manifest: Any
    inputs: dict[str, str]
    """Its files the pruned run is made from, with their sha256s (``checkpoint.pt``)."""
    trained: dict[str, Any]
    """Its recorded finetune options."""
    recovery: dict[str, Any]
    """The recovery's finetune options (:meth:`PruneConfig.recovery_options`)."""
    settings: TrainSettings
    """The recovery's training."""
    teacher: Any
    splits: Any
    spec: Any

    @property
    def run_dir(self) -> Path:
        return self.manifest.run_dir

    @classmethod
    def load(cls, run_dir: Path, config: PruneConfig, verify: bool = True) -> _Parent:
        from .models import load_run_model
        from .preprocessing import PreprocessSpec
        from .run.integrity import require_current
        from .run.manifest import Manifest, is_run_folder
        from .data import load_run_splits
        from .run.stage import verify_inputs

        if not is_run_folder(run_dir):
            raise RunFolderError(f"{run_dir} is not an edgetl run folder (no edgetl.json): prune a fine-tuned run")
        manifest = Manifest.load(run_dir)
        if not manifest.completed(FINETUNE) or not (run_dir / "checkpoint.pt").is_file():
            raise RunFolderError(f"{run_dir} has no finished fine-tuning checkpoint to prune: run `edgetl finetune` first")
        require_current(manifest, FINETUNE)
        inputs = verify_inputs(manifest, ["checkpoint.pt"], verify=verify)
        teacher, _ = load_run_model(run_dir)
        trained = dict(manifest.record(FINETUNE).options)
        recovery = config.recovery_options(trained)
        return cls(manifest, inputs, trained, recovery, recorded_settings(recovery, start_is_candidate=True), teacher,
                   load_run_splits(manifest, trained), PreprocessSpec.from_dict(manifest.preprocessing))

    def bundle(self, model: Any, architecture: dict[str, Any] | None = None) -> Any:
        """``model`` (the student) as the trainer takes it."""
        from .models import ModelBundle

        return ModelBundle(model=model, name=self.manifest.model["name"], preprocess=self.spec,
                           head=list(self.manifest.model["head"]), pretrained=f"pruned:{self.run_dir.name}",
                           num_classes=len(self.manifest.classes), architecture=architecture)

    def job(self, config: PruneConfig, progress: bool) -> Any:
        import copy

        import torch

        from .compress.prune.job import PruneJob
        from .data import EvalImages

        size = self.manifest.preprocessing.get("input_size") or self.manifest.model.get("input_size")
        example = torch.zeros(1, 3, *(size if isinstance(size, (list, tuple)) else (size, size)))
        val = EvalImages(self.splits.val, self.spec)
        goal = parse_ms(config.target_latency) if config.target_latency else (
            parse_macs(config.target_macs) if config.target_macs else None)
        return PruneJob(config, self.settings, self.teacher, copy.deepcopy(self.teacher), list(self.manifest.model["head"]),
                        example, self.splits.train, val, self.spec, self._step_recovery(config, progress),
                        self._latency(config, val[:1]) if config.target_latency else None, goal=goal)

    def _latency(self, config: PruneConfig, image: Any) -> Any:
        """Times a pruning step's student on ``config.target`` (INT8 calibrated on 32 training images: enough
        for a latency figure, not for the accuracy one)."""
        from .tune.latency import model_latency_ms

        calibration = self.splits.train[:32]

        def latency(model: Any) -> float:
            return model_latency_ms(model, self.spec, config.target, calibration, image)

        return latency

    def _step_recovery(self, config: PruneConfig, progress: bool) -> Any:
        """Between pruning steps: a short in-memory distillation (see :meth:`PruneConfig.step_settings`)."""
        from .train.trainer import Trainer

        settings = config.step_settings(self.settings)

        def recover(job: Any) -> None:
            if settings is None:
                return
            loss = distillation(job.teacher, job.student, config, job.feature_points(), settings.label_smoothing)
            try:
                Trainer(settings, self.bundle(job.student), self.splits, progress=progress, loss=loss).run(fresh=True)
            finally:
                loss.close()

        return recover


def _prune_into(staging: Any, lock: Any, parent: _Parent, config: PruneConfig, progress: bool) -> PruneResult:
    """Prune, then recover into the child run staged in ``staging`` (whose finetune ``lock`` is held)."""
    from .compress.prune import architecture_record
    from .compress.prune.counting import standard_macs
    from .run import create_child
    from .run.stage import stage
    from .train.callbacks import BEST, PromoteStaging
    from .train.stage import train_stage
    from .train.trainer import Trainer

    job = parent.job(config, progress)
    pruned = job.run()
    record = {**parent.manifest.model, "parameters": pruned.after["params"],
              "pruned": {"parent": str(parent.run_dir.resolve()), "macs": standard_macs(pruned.after)}}
    # the parent's checkpoint is the parent's file: the lineage records it, not this run's stage inputs
    child = create_child(parent.run_dir, staging.path, stage=str(PRUNE), model=record, inputs=parent.inputs)
    with stage(child, PRUNE, config.to_dict(), {}) as st:
        points = job.feature_points()
        loss = distillation(job.teacher, job.student, config, points, parent.settings.label_smoothing)
        trainer = Trainer(parent.settings, parent.bundle(job.student, architecture_record(job.student)), parent.splits,
                          staging.path, progress=progress, loss=loss, callbacks=[PromoteStaging(staging, child)])
        result = train_stage(trainer, child, parent.recovery, lock=lock, staging=staging)
        top1 = (pruned.top1_parent, pruned.top1_pruned, pruned.top1_repaired, result.metrics["top1"])
        st.metrics.update(prune_report(pruned.before, pruned.after, top1, pruned.steps, pruned.sparsity,
                                       trainer.run_dir / BEST, parent.run_dir / "checkpoint.pt"))
        st.metrics.update(repair=job.repair, classifier_inputs_kept=points[0].kept,
                          feature_points=[p.to_list() for p in points])
    return PruneResult(trainer.run_dir, parent.run_dir, dict(st.metrics))


# -- resume -------------------------------------------------------------------------------------

def resume(run_dir: str | Path, *, progress: bool = True, epochs: int | None = None,
           changes: dict[str, Any] | None = None) -> Any:
    """Continue a pruned run's recovery from ``checkpoints/last.pt`` (distilling from its parent again, with
    the recorded prune options), then update its prune report. ``epochs`` and ``changes`` as for
    :func:`edgetl.finetune.resume`; the recovery runs in one process, as it was trained."""
    from .run.lock import StageLock
    from .run.manifest import Manifest
    from .train.settings import resumed_options
    from .train.stage import BUSY, check_resumable, resume_training

    manifest = Manifest.load(run_dir)
    record = manifest.stage(FINETUNE)
    if manifest.stage(PRUNE) is None or record is None:
        raise RunFolderError(f"{run_dir} is not a pruned run with a recovery to resume: prune its parent again "
                             f"(edgetl prune PARENT -o {run_dir} --overwrite)")
    changes = {**(changes or {}), **({"epochs": epochs} if epochs is not None else {})}
    options = resumed_options(record["options"], changes, run_dir)
    with StageLock(run_dir, FINETUNE).acquire(BUSY) as lock:
        check_resumable(run_dir, record, changes)
        result = resume_training(manifest, options, changes, progress=progress, lock=lock,
                                 loss_for=lambda bundle: resumed_loss(manifest, bundle))
        update_report(manifest, result)
    return result


def resumed_loss(manifest: Any, bundle: Any) -> Any:
    """The loss a resumed recovery trains with: distillation from the parent run with the recorded prune
    options and feature points; ``bundle`` (the backbone as built) is reshaped to the pruned architecture."""
    from .compress.prune.recovery import parent_teacher, pruned_bundle

    pruned = manifest.record(PRUNE)
    config = PruneConfig.from_dict(pruned.options)
    points = [FeaturePoint.from_list(p) for p in pruned.metrics.get("feature_points") or []]
    pruned_bundle(manifest.run_dir, bundle)
    smoothing = recorded_settings(manifest.record(FINETUNE).options).label_smoothing
    return distillation(parent_teacher(manifest.run_dir, manifest.parent), bundle.model, config, points, smoothing)


def update_report(manifest: Any, result: Any) -> None:
    """After a resumed recovery: the prune report's recovered top-1 and drop against the parent."""
    from .run.stage import stage

    top1 = result.metrics["top1"]
    parent_top1 = manifest.record(PRUNE).metrics.get("top1_parent", top1)
    with stage(manifest, PRUNE, {}, reopen=True) as st:
        st.metrics.update(top1_recovered=top1, drop_points_vs_parent=round(100 * (parent_top1 - top1), 4))
