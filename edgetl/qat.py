"""Quantization-aware training of a target build: ``RUN/TARGET/int8-qat/``, stage ``TARGET:int8:qat``.

The run's float checkpoint is fake-quantized as the target's INT8 model will be (the QAT engine of its
quantizer backend, :mod:`edgetl.compress.quantize.qat`), trained by the project's one trainer on the run's
own training split and augmentation, the best epoch kept by fake-quantized val top-1 (the model before any
QAT step is epoch 0: QAT never ends worse than it started), then exported through the backend and measured
as every build is (:class:`edgetl.build.TargetBuild`), within the same accuracy budget.

The training files live in ``RUN/qat/TARGET-int8/`` (``checkpoint.pt``, ``checkpoints/last.pt``,
``metrics.json``). A QAT stopped mid-way (Ctrl-C, kill -9) continues from its last epoch when the same
command runs again with the same options and inputs, and ends bit for bit as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any

from . import build as ptq
from ._io import staging_dir
from .build import TargetBuild, TargetBuildConfig, TargetBuildResult, check_build_config, quantization_block
from .errors import RunFolderError
from .export import CHECKPOINT, ONNX_FILE
from .run.integrity import require_current
from .run.keys import FINETUNE, ONNX, QAT_TRAINING_DIR, Precision, StageKey, Status, is_done
from .run.manifest import Manifest
from .run.stage import stage, verify_inputs
from .train.callbacks import BEST, LAST
from .train.trainer import METRICS

log = logging.getLogger(__name__)
QAT_FOLDER = "int8-qat"
"""The QAT build's folder inside ``RUN/TARGET/`` (beside the PTQ build's ``int8``)."""
QAT_OPTIONS = ("qat_epochs", "qat_lr", "qat_patience", "seed", "calib_data", "calib_size", "calibration")
"""Options that change what QAT trains: a resumed QAT must have the same."""


def default_qat_epochs(finetune_epochs: int) -> int:
    """About a tenth of the fine-tuning's epochs (NVIDIA's QAT guidance), 2 to 10."""
    return min(10, max(2, math.ceil(finetune_epochs / 10)))


def qat_target(run_dir: str | Path, config: TargetBuildConfig | None = None, *, verify: bool = True,
               progress: bool = True) -> TargetBuildResult:
    """Quantization-aware training of ``run_dir`` for ``config.target`` (INT8), recorded as ``TARGET:int8:qat``.
    Raises :class:`AccuracyBudgetError` (after saving and recording the model) when it misses the budget."""
    config = config or TargetBuildConfig()
    profile, precision, toolchain = check_build_config(dataclasses.replace(config, precision=Precision.INT8))
    manifest = Manifest.load(run_dir)
    manifest.require(ONNX, f"run `edgetl export {run_dir}` first")
    require_current(manifest, ONNX)
    inputs = verify_inputs(manifest, [ONNX_FILE, CHECKPOINT], verify=verify)
    return _QAT(manifest, profile, toolchain, config, inputs, progress).run()


@dataclasses.dataclass
class _QAT:
    manifest: Manifest
    profile: Any
    toolchain: Any
    config: TargetBuildConfig
    inputs: dict[str, str]
    progress: bool

    @functools.cached_property
    def finetune_options(self) -> dict[str, Any]:
        """The run's recorded training options (its recipe, and where its images are)."""
        record = self.manifest.record(FINETUNE)
        return dict(record.options) if record else {}

    @property
    def key(self) -> StageKey:
        return StageKey.qat(self.profile.name, Precision.INT8)

    def run(self) -> TargetBuildResult:
        from .compress import quantize as q
        from .data import EvalImages, run_eval_samples
        from .preprocessing import PreprocessSpec

        manifest, cfg, run_dir = self.manifest, self.config, self.manifest.run_dir
        self.toolchain.check(Precision.INT8)
        spec = PreprocessSpec.from_dict(manifest.preprocessing)
        images = EvalImages(run_eval_samples(manifest, cfg.data), spec)
        calib = q.calibration_samples(manifest, cfg.calib_data, cfg.calib_size, cfg.seed)
        float_top1 = ptq.checkpoint_top1(run_dir, images, images.labels)  # the PTQ build's reference
        build = TargetBuild(self.toolchain, manifest, self.profile, Precision.INT8, cfg,
                            self.toolchain.runner_options(self.profile, Precision.INT8), images, float_top1,
                            cfg.budget(self.profile, Precision.INT8))
        settings = self.train_settings()
        options = {**dataclasses.asdict(cfg), "precision": Precision.INT8, "target": self.profile.name,
                   "qat_epochs": settings.epochs}
        resume = self.resumable(options)
        final = run_dir / self.profile.name / QAT_FOLDER
        with stage(manifest, self.key, options, self.inputs, reopen=resume,
                   busy_hint="another QAT of it is running") as st:
            float_model = self.toolchain.convert(run_dir / ONNX_FILE)
            exported, engine, result = self.train(settings, float_model, calib, spec, resume)
            with staging_dir(final) as tmp:
                saved, metrics = build.write(tmp, float_model, exported, _qat_metrics(engine, result, len(calib)))
            build.record(st, final, saved, metrics)
            st.artifact(self.training_dir() / BEST)  # the trained fake-quant model and its history
            st.artifact(self.training_dir() / METRICS)
        result = TargetBuildResult(str(self.key), final / saved[0].name, str(st.status), metrics)
        if st.status == Status.BUDGET_MISSED:
            raise ptq.budget_error(result, "Try --qat-epochs N, fp16, or --max-drop N / none")
        log.info("wrote %s: top-1 %.2f%% (drop %.2f points) after QAT, runs in %s", final / saved[0].name,
                 100 * metrics["top1"], metrics["drop_points"], metrics["executed_precision"])
        return result

    def train_settings(self) -> Any:
        """The run's own training recipe (batch, augmentation, label smoothing), every layer at ``qat_lr``."""
        from .train.settings import TrainSettings

        ft, cfg = self.finetune_options, self.config
        epochs = cfg.qat_epochs or default_qat_epochs(int(ft.get("epochs") or 10))
        return TrainSettings(epochs=epochs, batch_size=int(ft.get("batch_size") or 32), lr=cfg.qat_lr,
                             strategy="full", backbone_lr_scale=1.0, weight_decay=0.0, warmup_epochs=0.0,
                             label_smoothing=float(ft.get("label_smoothing", 0.1)), augment=bool(ft.get("augment", True)),
                             augment_strength=float(ft.get("augment_strength", 1.0)), patience=cfg.qat_patience,
                             freeze_bn=True, seed=cfg.seed, workers=int(ft.get("workers", 1) or 0),
                             threads=ft.get("threads"), start_is_candidate=True)

    def train(self, settings: Any, float_model: Any, calib: list, spec: Any, resume: bool) -> tuple[Any, Any, Any]:
        import torch

        from .compress import quantize as q
        from .data import load_run_splits
        from .models import ModelBundle, load_run_model
        from .train import distributed
        from .train.trainer import Trainer

        manifest, cfg = self.manifest, self.config
        distributed.set_threads(settings.threads)
        torch.manual_seed(settings.seed)
        backend = q.get_backend(self.toolchain.quantizer)
        qsettings = backend.settings(quantization_block(self.profile, cfg), f"{self.profile.name}.yaml")
        engine = backend.qat()
        model, checkpoint = load_run_model(manifest.run_dir)
        prepared = engine.prepare(model, float_model, calib, spec, qsettings, backend)
        bundle = ModelBundle(model=prepared, name=checkpoint["model_name"], preprocess=spec,
                             head=list(manifest.model["head"]), pretrained="qat", num_classes=len(manifest.classes),
                             architecture=checkpoint.get("architecture"))
        trainer = Trainer(settings, bundle, load_run_splits(manifest, self.finetune_options), self.training_dir(),
                          progress=self.progress)
        if resume:
            try:
                trainer.restore()
            except RunFolderError as exc:  # written by another edgetl, or damaged: QAT is cheap to start again
                log.warning("cannot continue the stopped QAT (%s): starting it again", str(exc).split(": ")[0])
                return self.train(settings, float_model, calib, spec, resume=False)
        result = trainer.run(fresh=not resume)
        return engine.export(trainer.model), engine, result

    def training_dir(self) -> Path:
        return self.manifest.run_dir / QAT_TRAINING_DIR / f"{self.profile.name}-{Precision.INT8}"

    def resumable(self, options: dict[str, Any]) -> bool:
        """A QAT of this target that stopped mid-way with the same options and inputs: continue it."""
        record = self.manifest.record(self.key)
        if record is None or is_done(record.status) or not (self.training_dir() / LAST).is_file():
            return False
        same = all(record.options.get(k) == options.get(k) for k in QAT_OPTIONS) and record.inputs == self.inputs
        if same:
            log.info("continuing the QAT of %s that stopped (%s)", self.key, record.status)
        return same


def _qat_metrics(engine: Any, training: Any, calib_images: int) -> dict[str, Any]:
    """What a QAT build adds to build.json's metrics: the method, the engine and how the training went."""
    described = engine.describe()
    return {"method": "qat", "calibration": described.get("calibration", "qat-trained"), "calib_images": calib_images,
            "qat": {**described, "fake_quant_val_top1": training.metrics["top1"],
                    **{k: training.metrics[k] for k in ("epochs_run", "best_epoch", "wall_time_s")}}}
