"""Transfer learning: linear probe, full fine-tune, gradual unfreezing; checkpoints and resume.

The run folder is created only after the dataset and model have been validated; every epoch
writes ``checkpoints/last.pt`` (the full training state, for ``--resume``) and, when val top-1
improves, ``checkpoint.pt`` (the float model that later stages read).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from ._allocator import steady_allocator
from ._io import sha256
from .data import DatasetSplits, load_splits
from .errors import ConfigError, DatasetError, RunFolderError
from .models import ModelBundle, build_model
from .run.keys import FINETUNE, StageKind, Status
from .run.lock import StageLock
from .run.manifest import Manifest
from .run.split import SPLIT_NAME, write_split
from .train import distributed
from .train.cache import SharedCache
from .train.callbacks import LAST, PromoteStaging
from .train.settings import RESUMABLE, TrainSettings, recorded_settings, resumed_options  # noqa: F401
from .train.stage import BUSY, check_resumable, resume_training, train_stage
from .train.strategies import STRATEGIES, layer_groups  # noqa: F401  (layer_groups: public helper)
from .train.trainer import FinetuneResult, Trainer  # noqa: F401  (FinetuneResult: public)

log = logging.getLogger(__name__)

Strategy = Literal["linear-probe", "full", "gradual"]


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
    augment_strength: float = 1.0
    """How hard ``augment`` distorts, 0-2: crops down to 1 - 0.65 x strength of the image's area (at least
    8%), colour jitter 0.2 x strength; 0 leaves flips and aspect-ratio changes only."""
    probe_epochs: int = 10
    """gradual only: first train the head alone on cached features for this many (cheap) epochs, so
    unfreezing starts from a converged head (LP-FT); 0 skips it."""
    cache_features: bool = True
    """linear-probe only: compute backbone features once and train the head on them."""
    patience: int | None = 5
    """Stop after this many epochs without a better val top-1, or the same top-1 at a lower val loss (None: never)."""
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
    ema: float | None = None
    """Evaluate, keep and save an exponential moving average of the weights (its largest decay per step,
    e.g. 0.99; warmed up from 0 so a short run is averaged too) instead of the raw weights: steadier val
    top-1 on small datasets. None: off."""
    freeze_bn: bool | None = None
    """Keep BatchNorm statistics fixed while fine-tuning (None: yes when starting from pretrained weights,
    which small datasets cannot re-estimate well; no for random init)."""
    save_every_epoch: bool = False
    """Keep ``checkpoints/epoch_NNN.pt`` for every epoch, not only the last and the best."""
    nproc: int = 1
    """Training processes on this machine (DistributedDataParallel, torch's elastic launcher); ``batch_size``
    is the global batch, split evenly over them. Under ``torchrun`` the job's world size."""
    sync_bn: bool = False
    """Several processes: synchronise BatchNorm statistics across them (SyncBatchNorm; GPUs only)."""

    def __post_init__(self) -> None:
        from .config import check_fields

        check_fields(self)  # types first: "three" epochs, "false" augment, a list for a model name
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, not {self.optimizer!r}")
        for name in ("epochs", "batch_size", "nproc"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("lr must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing must be in [0, 1)")
        if not 0 <= self.augment_strength <= 2:
            raise ConfigError(f"augment_strength must be in [0, 2], not {self.augment_strength}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"ema is a decay in (0, 1), not {self.ema}")
        if self.probe_epochs < 0:
            raise ConfigError("probe_epochs cannot be negative")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("patience must be at least 1 (or None to disable early stopping)")
        if self.batch_size % self.nproc and not self._more_processes_than_cores():
            raise ConfigError(f"--batch-size {self.batch_size} is the global batch and does not split evenly over "
                              f"{self.nproc} processes: use a multiple of {self.nproc}")

    def _more_processes_than_cores(self) -> bool:
        """--nproc above this machine's cores: the launch refuses that first, so the batch rule waits."""
        return self.nproc > distributed.usable_cores() and not distributed.in_worker()

    @property
    def run_name(self) -> str:
        """Default run folder name: ``DATASET-MODEL``."""
        return f"{Path(self.data).resolve().name}-{self.model.replace(':', '-')}"

    def to_dict(self) -> dict[str, Any]:
        """What the run's finetune stage records as its options (and a worker process rebuilds it from)."""
        return asdict(self)

    def train_settings(self) -> TrainSettings:
        """What the training loop needs of this config."""
        return recorded_settings(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recorded fine-tuning options") -> FinetuneConfig:
        """The config from a mapping (a manifest's options, a worker's copy): every key must be a field (no
        field was ever removed, so every manifest edgetl wrote reads back) and every value its field's type."""
        from .config import config_from_dict

        return config_from_dict(cls, data, source)


# -- public entry points ------------------------------------------------------------------

def finetune(config: FinetuneConfig, *, overwrite: bool = False, progress: bool = True,
             callbacks: list[Any] | None = None, cache: SharedCache | None = None) -> FinetuneResult:
    """Train a new run from ``config``. An existing run folder is replaced only with ``overwrite``, and only
    once the new run has finished its first epoch (see :mod:`edgetl.run.newrun`). ``callbacks`` get
    ``on_epoch_end(trainer, record)`` after every epoch and may set ``trainer.should_stop`` (a search's
    pruner, for one). ``cache`` (a :class:`~edgetl.train.cache.SharedCache`) lets runs of one search share
    the dataset scan and a frozen backbone's features (single-process runs)."""
    from .run.newrun import check_output, default_output

    data_root = Path(config.data).resolve()
    if not data_root.exists():
        raise DatasetError(f"dataset path does not exist: {config.data}")
    config.data, config.val = str(data_root), str(Path(config.val).resolve()) if config.val else None
    output = Path(config.output) if config.output else default_output(data_root, config.run_name)
    roots = [data_root] + ([Path(config.val)] if config.val else [])
    run_dir = check_output(output, roots, overwrite=overwrite)
    config.output = str(run_dir)
    if config.nproc > 1 and not distributed.in_worker():
        distributed.check_launch(config.nproc, sync_bn=config.sync_bn)
        job = WorkerJob(JobKind.NEW, str(run_dir), progress, options=config.to_dict(), overwrite=overwrite,
                        callbacks=tuple(callbacks or ()))
        return _launch(run_dir, config.nproc, job)
    with distributed.process_group() as dist:
        if dist.active:  # under torchrun: the job's size, whatever --nproc said
            config.nproc = dist.world
            config.__post_init__()
        return _train_new(config, run_dir, dist, overwrite=overwrite, progress=progress, callbacks=callbacks,
                          cache=cache if not dist.active else None)


def _train_new(config: FinetuneConfig, run_dir: Path, dist: distributed.Dist, *, overwrite: bool, progress: bool,
               callbacks: list[Any] | None, cache: SharedCache | None = None) -> FinetuneResult:
    """A new run in this process (rank 0 alone creates and writes the run folder)."""
    import torch

    from .run.newrun import RunStaging

    steady_allocator()  # activations are allocated and freed every step: keep them out of mmap/munmap
    settings = config.train_settings()
    distributed.set_threads(settings.threads)
    torch.manual_seed(config.seed)
    splits = dist.broadcast(_load_splits(config, cache) if dist.is_main else None)
    if dist.is_main:
        _log_splits(splits)
    bundle = build_model(config.model, len(splits.classes), pretrained=config.pretrained, weights=config.weights,
                         image_size=config.image_size)
    if dist.active:  # same initial weights on every rank, then each its own augmentation and dropout draws
        torch.manual_seed(config.seed + dist.rank)
    if not dist.is_main:
        return Trainer(settings, bundle, splits, callbacks=callbacks or ()).run(fresh=True)
    staging = RunStaging(run_dir)
    try:
        with StageLock(staging.path, FINETUNE) as lock:
            manifest = Manifest.create(staging.path, model=_model_record(bundle), classes=splits.classes,
                                       preprocessing=bundle.preprocess.to_dict())
            split_file = write_split(staging.path, splits.classes, splits.train, splits.val, splits.val_source)
            manifest.set("dataset", {**_dataset_record(splits, config), "split": SPLIT_NAME,
                                     "split_sha256": sha256(split_file)})
            trainer = Trainer(settings, bundle, splits, staging.path, progress=progress, cache=cache,
                              callbacks=[PromoteStaging(staging, manifest), *(callbacks or ())])
            return train_stage(trainer, manifest, config.to_dict(), lock=lock, staging=staging)
    finally:
        staging.discard()  # a run that never finished an epoch leaves nothing (and the old run intact)


# -- several processes ------------------------------------------------------------------------

class JobKind(str, Enum):
    NEW = "new"
    RESUME = "resume"


@dataclass(frozen=True)
class WorkerJob:
    """What every process of a multi-process run does (picklable: each spawned worker gets a copy)."""

    kind: JobKind
    run_dir: str
    progress: bool = True
    options: dict[str, Any] | None = None
    """A new run: its :meth:`FinetuneConfig.to_dict`."""
    overwrite: bool = False
    callbacks: tuple[Any, ...] = ()
    changes: dict[str, Any] | None = None
    """A resume: the options it changes."""

    def run(self) -> FinetuneResult:
        if self.kind is JobKind.NEW:
            return finetune(FinetuneConfig.from_dict(self.options or {}, "a worker's fine-tuning options"),
                            overwrite=self.overwrite, progress=self.progress, callbacks=list(self.callbacks))
        return resume(self.run_dir, progress=self.progress, changes=self.changes)


def _launch(run_dir: Path, nproc: int, job: WorkerJob) -> FinetuneResult:
    """Run ``job`` in ``nproc`` processes; on a failure, leave the run resumable and say so."""
    from .run.lock import stage_busy
    from .run.manifest import is_run_folder
    from .run.newrun import remove_abandoned

    try:
        return distributed.launch(nproc, _worker, job)
    except distributed.WorkerFailedError as exc:
        remove_abandoned(run_dir)  # a staged run that never finished its first epoch
        if is_run_folder(run_dir) and not stage_busy(run_dir, FINETUNE):
            manifest = Manifest.load(run_dir)
            record = manifest.record(FINETUNE)
            if record and record.status in (Status.RUNNING, Status.FAILED):
                manifest.fail(FINETUNE, str(exc))  # the root cause, not rank 0's lost connection to a killed peer
            if (run_dir / LAST).is_file():
                raise distributed.WorkerFailedError(f"{exc}; resume with: edgetl finetune --resume {run_dir}") from None
        raise


def _worker(job: WorkerJob) -> FinetuneResult:
    """One process of a multi-process run (started by :func:`distributed.launch`)."""
    from ._console import setup_logging

    setup_logging()
    if not distributed.is_main():
        logging.getLogger("edgetl").setLevel(logging.WARNING)  # rank 0 reports
    return job.run()


# -- resume -------------------------------------------------------------------------------------

def resume(run_dir: str | Path, *, progress: bool = True, epochs: int | None = None,
           changes: dict[str, Any] | None = None) -> FinetuneResult:
    """Continue a fine-tuning run from ``checkpoints/last.pt`` with its recorded options, data order and RNG
    states (a run that another stage made resumes through ``edgetl.resume(RUN)``).

    ``epochs`` (or ``changes["epochs"]``) extends a run; other ``changes`` may only touch :data:`RESUMABLE`
    options or repeat the recorded value. The run must not be training in another process.
    """
    manifest = Manifest.load(run_dir)
    _check_lineage(manifest)
    record = manifest.stage(FINETUNE)
    if record is None:
        raise RunFolderError(f"{run_dir} has no finetune stage to resume")
    changes = {**(changes or {}), **({"epochs": epochs} if epochs is not None else {})}
    config = _resumed_config(record["options"], changes, run_dir)
    if config.nproc > 1 and not distributed.in_worker():
        distributed.check_launch(config.nproc, sync_bn=config.sync_bn)
        with StageLock(run_dir, FINETUNE).acquire(BUSY):
            check_resumable(run_dir, record, changes)  # refused here, before any worker starts
        return _launch(Path(run_dir), config.nproc, WorkerJob(JobKind.RESUME, str(run_dir), progress, changes=changes))
    with distributed.process_group() as dist:
        lock = StageLock(run_dir, FINETUNE).acquire(BUSY) if dist.is_main else None
        with lock or contextlib.nullcontext():
            check_resumable(run_dir, record, changes)
            return resume_training(manifest, config.to_dict(), changes, progress=progress, lock=lock)


def _check_lineage(manifest: Manifest) -> None:
    """Refuse a run another stage made (it has its own resume); a search trial is a fine-tuning run."""
    made_by = (manifest.parent or {}).get("stage")
    if made_by not in (None, StageKind.FINETUNE, StageKind.TUNE):
        raise RunFolderError(f"{manifest.run_dir} was made by `edgetl {made_by}`, not by fine-tuning: resume it with "
                             f"edgetl.resume({str(manifest.run_dir)!r}) (edgetl finetune --resume {manifest.run_dir})")


def _resumed_config(recorded: dict[str, Any], changes: dict[str, Any], run_dir: str | Path) -> FinetuneConfig:
    options = resumed_options(FinetuneConfig.from_dict(recorded).to_dict(), changes, run_dir)
    return FinetuneConfig.from_dict({**options, "output": str(run_dir)})


def _load_splits(config: FinetuneConfig, cache: SharedCache | None) -> DatasetSplits:
    def load() -> DatasetSplits:
        return load_splits(config.data, val=config.val, val_fraction=config.val_fraction, seed=config.seed,
                           strict=config.strict)

    key = (config.data, config.val, config.val_fraction, config.seed, config.strict)
    return cache.splits(key, load) if cache is not None else load()


def _log_splits(splits: DatasetSplits) -> None:
    for scan in splits.scans:
        log.info(scan.summary())
    if splits.skipped:
        log.warning("%d unreadable image(s) skipped (use --strict to fail instead)", splits.skipped)
    log.info("train %d / val %d images (%s), classes: %s", len(splits.train), len(splits.val), splits.val_source,
             ", ".join(splits.classes))


def _model_record(bundle: ModelBundle) -> dict[str, Any]:
    return {**bundle.describe(), "input_size": bundle.preprocess.input_size}


def _dataset_record(splits: DatasetSplits, config: FinetuneConfig) -> dict[str, Any]:
    return {"root": str(Path(config.data).resolve()), "train": len(splits.train), "val": len(splits.val),
            "val_source": splits.val_source, "skipped_unreadable": splits.skipped,
            "converted_to_rgb": splits.converted,
            "skipped_files": [str(p) for s in splits.scans for p, _ in s.skipped]}
