"""Build a run for a target device: ``RUN/onnx/model.onnx`` -> ``RUN/TARGET/PRECISION/`` (e.g. OpenVINO IR).

``build_target`` reads the target profile, converts (and for INT8 quantizes) the float ONNX
model, checks top-1 on the run's val split against the PyTorch float model, times batch-1
latency, and records the stage ``TARGET:PRECISION`` in the manifest. The output folder appears
whole or not at all. An accuracy budget (``max_drop``) that cannot be met raises
:class:`AccuracyBudgetError` after the best model found has been saved and recorded with status
``budget-missed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._io import staging_dir, write_json
from .errors import AccuracyBudgetError, ConfigError, RunFolderError
from .evaluate import latency_p50_ms
from .export import CHECKPOINT, ONNX_FILE
from .run.integrity import require_current
from .run.keys import ONNX, Precision, StageKey, Status
from .run.manifest import Manifest, library_versions
from .run.stage import stage, verify_inputs
from .profiles import TargetProfile, load_target
from .toolchains import TOOLCHAINS, SavedArtifact, Toolchain, get_toolchain

log = logging.getLogger(__name__)
BUDGET_MISSED = Status.BUDGET_MISSED  # the old name
NO_BUDGET = "none"
"""``max_drop`` that turns the budget off (``--max-drop none``)."""


@dataclass
class TargetBuildConfig:
    """What to build for which device, and how it must score."""

    target: str = "intel-cpu"
    """Target profile name (``targets/NAME.yaml``)."""
    precision: str | None = None
    """fp32, fp16 or int8 (default: the profile's default precision)."""
    calib_data: str | None = None
    """Folder of calibration images with the run's classes (default: the run's training split)."""
    calib_size: int = 300
    """How many calibration images to sample, class-balanced."""
    max_drop: float | Literal["none"] | None = None
    """Allowed top-1 drop of an FP16 or INT8 build on val vs the PyTorch float model, in points [default: the
    target profile's max_drop, 1.0 for the shipped targets]; none: no budget."""
    data: str | None = None
    """Labelled folder to evaluate on (default: the run's val split)."""
    accuracy_control: bool = True
    """When plain INT8 misses ``max_drop``, run NNCF's accuracy-controlled quantization."""
    qat: bool | None = None
    """Quantization-aware training: on (always), off (never); default: when PTQ and its fallback miss the budget."""
    qat_epochs: int | None = None
    """QAT epochs [default: a tenth of the fine-tuning's epochs, 2 to 10]."""
    qat_lr: float = 1e-5
    """QAT learning rate (AdamW, every layer, cosine decay), the published QAT fine-tuning rate."""
    qat_patience: int = 2
    """Stop QAT after this many epochs without a better fake-quantized val top-1."""
    max_reverted_layers: int | None = None
    """Accuracy control: most layers that may return to float (None: no limit)."""
    sensitivity_images: int = 8
    """Val images for the per-layer INT8 sensitivity report (0: skip it)."""
    latency_runs: int = 50
    """Timed batch-1 inferences for the quick latency figure (0: skip)."""
    seed: int = 0
    """Seed for calibration sampling."""
    calibration: str | None = None
    """TensorRT targets: activation ranges, auto (chosen per model on held-out calibration images), minmax,
    entropy or percentile [default: the target's, auto]."""
    dla_core: int | None = None
    """TensorRT targets: build for this DLA core with GPU fallback (Orin NX, AGX Orin)."""
    max_batch: int | None = None
    """TensorRT targets: largest batch of the engine's optimization profile [default: the target's]."""
    hardware_compatibility: str | None = None
    """TensorRT targets: none, ampere+ or same-compute-capability (an engine that runs on other GPUs)."""
    version_compatible: bool = False
    """TensorRT targets: an engine later TensorRT versions can load (lean runtime)."""

    def __post_init__(self) -> None:
        if self.calib_size < 1:
            raise ConfigError(f"calib_size must be at least 1, got {self.calib_size}")
        if isinstance(self.max_drop, str) and self.max_drop != NO_BUDGET:
            raise ConfigError(f"max_drop is a number of top-1 points or {NO_BUDGET!r}, got {self.max_drop!r}")
        if isinstance(self.max_drop, (int, float)) and not 0 <= self.max_drop <= 100:
            raise ConfigError(f"max_drop is in top-1 points (0-100), got {self.max_drop}")
        if self.qat_epochs is not None and self.qat_epochs < 1 or self.qat_lr <= 0 or self.qat_patience < 1:
            raise ConfigError("qat_epochs and qat_patience must be at least 1 and qat_lr positive")
        if self.sensitivity_images < 0 or self.latency_runs < 0:
            raise ConfigError("sensitivity_images and latency_runs cannot be negative")

    def budget(self, profile: TargetProfile, precision: str) -> Budget:
        """The budget in force: ``--max-drop``, else the profile's for FP16 and INT8 builds (FP32: only asked)."""
        if self.max_drop == NO_BUDGET:
            return Budget(None, "--max-drop none")
        if self.max_drop is not None:
            return Budget(float(self.max_drop), "--max-drop")
        if precision == Precision.FP32 or profile.max_drop is None:
            return Budget(None, "none asked" if precision == Precision.FP32 else f"target {profile.name} sets none")
        return Budget(profile.max_drop, f"target {profile.name}")


@dataclass(frozen=True)
class Budget:
    """The accuracy budget of one build: top-1 points it may lose (None: none) and where that figure came from."""

    max_drop: float | None
    source: str

    def missed(self, drop_points: float) -> bool:
        return self.max_drop is not None and drop_points > self.max_drop + 1e-9

    def describe(self) -> str:
        """``a budget of 1.0 point (target intel-cpu)`` (for messages)."""
        if self.max_drop is None:
            return f"no budget ({self.source})"
        return f"a budget of {self.max_drop:g} point{'' if self.max_drop == 1 else 's'} ({self.source})"


@dataclass
class TargetBuildResult:
    stage: str
    path: Path
    """The runnable artifact (OpenVINO: ``model.xml``)."""
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)


def stage_name(target: str, precision: str) -> str:
    """The manifest name of a target build (``intel-cpu:int8``)."""
    return str(StageKey.build(target, precision))


def check_build_config(config: TargetBuildConfig) -> tuple[TargetProfile, str, Toolchain]:
    """The target's profile, the precision and the toolchain, once every option has been checked against
    them (unknown target or precision, a DLA core the module lacks, a typo in the profile's quantization
    block): a bad request fails here, before any work."""
    profile = load_target(config.target)
    precision = profile.check_precision(config.precision)
    toolchain = get_toolchain(profile.toolchain)
    toolchain.check_config(profile, precision, config, [get_toolchain(name) for name in TOOLCHAINS])
    if config.qat and precision != Precision.INT8:
        raise ConfigError(f"--qat trains an INT8 model: it does not apply to --precision {precision}")
    if precision == "int8":
        from .compress.quantize import get_backend

        get_backend(toolchain.quantizer).settings(quantization_block(profile, config), f"{profile.name}.yaml")
    return profile, precision, toolchain


def quantization_block(profile: TargetProfile, config: TargetBuildConfig) -> dict[str, Any]:
    """The profile's quantization settings, with ``--calibration`` when given."""
    return {**profile.quantization, **({"calibration": config.calibration} if config.calibration else {})}


def build_target(run_dir: str | Path, config: TargetBuildConfig | None = None, *,
                 verify: bool = True) -> TargetBuildResult:
    """Build ``run_dir`` for ``config.target`` at ``config.precision`` and record it in the manifest.

    The float ONNX model and checkpoint are checked against their recorded sha256s (``verify=False``
    skips that), and an ONNX export older than the checkpoint is refused as stale.
    """
    config = config or TargetBuildConfig()
    profile, precision, toolchain = check_build_config(config)
    qat = False if precision != Precision.INT8 else config.qat  # None: when PTQ misses the budget
    manifest = Manifest.load(run_dir)
    manifest.require(ONNX, f"run `edgetl export {run_dir}` first")
    require_current(manifest, ONNX)
    inputs = verify_inputs(manifest, [ONNX_FILE, CHECKPOINT], verify=verify)
    if qat:  # --qat: straight to it (it calibrates as PTQ does)
        return _qat_stage()(run_dir, config, verify=False)
    result = _build(manifest.run_dir, manifest, profile, precision, config, inputs, toolchain)
    if result.status != Status.BUDGET_MISSED:
        return result
    if qat is False:
        raise budget_error(result, "Try more representative --calib-data, fp16, --qat, or --max-drop N / none")
    log.warning("%s missed its accuracy budget (drop %.2f points > %g): running quantization-aware training "
                "(--no-qat: stop there)", result.stage, result.metrics["drop_points"], result.metrics["max_drop"])
    return _qat_stage()(run_dir, config, verify=False)


def _qat_stage() -> Any:
    """``edgetl.qat.qat_target``, reached through the stage table (that module builds on this one)."""
    from .run.keys import StageKind
    from .stages import stage_for

    return stage_for(StageKind.QAT).run


def budget_error(result: TargetBuildResult, hint: str) -> AccuracyBudgetError:
    """The one-line error of a build recorded budget-missed, with its figures and ``hint``."""
    m = result.metrics
    return AccuracyBudgetError(
        f"{result.stage} missed its accuracy budget: top-1 drop {m['drop_points']:.2f} points exceeds "
        f"{Budget(m['max_drop'], m['budget_source']).describe()} ({100 * m['top1']:.2f}% vs float "
        f"{100 * m['float_top1']:.2f}%, {m['method']}); kept in {result.path.parent} as budget-missed (`edgetl "
        f"package` refuses it without --allow-budget-miss). {hint}")


# -- the generic build ----------------------------------------------------------------------

def _build(run_dir: Path, manifest: Manifest, profile: TargetProfile, precision: str, config: TargetBuildConfig,
           inputs: dict[str, str], toolchain: Toolchain) -> TargetBuildResult:
    from .compress import quantize as q
    from .data import EvalImages, run_eval_samples
    from .preprocessing import PreprocessSpec

    toolchain.check(precision)  # the install hint before any work
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    images = EvalImages(run_eval_samples(manifest, config.data), spec)  # decoded a batch at a time
    calib = (q.calibration_samples(manifest, config.calib_data, config.calib_size, config.seed)
             if precision == "int8" else [])
    float_top1 = checkpoint_top1(run_dir, images, images.labels)
    name, final = stage_name(profile.name, precision), run_dir / profile.name / precision
    build = TargetBuild(toolchain, manifest, profile, precision, config, toolchain.runner_options(profile, precision),
                   images, float_top1, config.budget(profile, precision))
    options = {**asdict(config), "precision": precision, "target": profile.name}
    with stage(manifest, name, options, inputs, busy_hint="another build of it is running") as st:
        start = time.perf_counter()
        float_model = toolchain.convert(run_dir / ONNX_FILE)
        model, quantized = (build.quantize(float_model, calib, spec) if precision == "int8" else (float_model, {}))
        build.build_s = time.perf_counter() - start
        with staging_dir(final) as tmp:
            saved, metrics = build.write(tmp, float_model, model, quantized)
        build.record(st, final, saved, metrics)
    if st.status != Status.BUDGET_MISSED:
        log.info("wrote %s: top-1 %.2f%% (drop %.2f points), runs in %s, p50 %.2f ms", final / saved[0].name,
                 100 * metrics["top1"], metrics["drop_points"], metrics["executed_precision"],
                 metrics["latency_p50_ms"] or float("nan"))
    return TargetBuildResult(name, final / saved[0].name, str(st.status), metrics)


@dataclass
class TargetBuild:
    """One target build: quantize within the budget, then save and measure the files as saved."""

    toolchain: Toolchain
    manifest: Manifest
    profile: TargetProfile
    precision: str
    config: TargetBuildConfig
    runner_options: dict[str, Any]
    images: Any
    """:class:`~edgetl.data.EvalImages` (or an NCHW array)."""
    float_top1: float
    budget: Budget
    build_s: float = 0.0

    def _runner(self, model_or_path: Any) -> Any:
        return self.toolchain.runner(model_or_path, self.toolchain.device(self.profile), self.runner_options)

    def quantize(self, float_model: Any, calib: list, spec: Any) -> tuple[Any, dict[str, Any]]:
        from .compress import quantize as q

        cfg, labels = self.config, self.images.labels
        backend = q.get_backend(self.toolchain.quantizer)
        evaluate = q.Evaluator(runner=self._runner, top1=lambda r: runner_top1(r, self.images, labels),
                               latency_ms=lambda r: latency_p50_ms(r, self.images[:1], cfg.latency_runs or 20))
        outcome = q.quantize_within_budget(
            backend, float_model, calib, spec,
            backend.settings(quantization_block(self.profile, cfg), f"{self.profile.name}.yaml"),
            evaluate, float_top1=self.float_top1, max_drop=self.budget.max_drop, accuracy_control=cfg.accuracy_control,
            max_reverted_layers=cfg.max_reverted_layers, images=self.images, labels=labels,
            layer_precisions=self.toolchain.layer_precisions)
        return outcome.model, outcome.metrics

    def record(self, st: Any, final: Path, saved: list[SavedArtifact], metrics: dict[str, Any]) -> None:
        """Record the build's files (the first with what runs it), its reports and metrics in the stage ``st``,
        and its status: budget-missed when the drop exceeds the budget."""
        tc = self.toolchain
        for i, artifact in enumerate(saved):
            record = {**artifact.record, **({"runtime": tc.runtime, "precision": self.precision,
                                             "device": tc.device(self.profile), "runner_options": self.runner_options,
                                             "executed_precision": metrics["executed_precision"]} if i == 0 else {})}
            st.artifact(final / artifact.name, **record)
        for report in ("sensitivity.json", "build.json"):
            if (final / report).is_file():
                st.artifact(final / report)
        st.metrics.update(metrics)
        st.status = Status.BUDGET_MISSED if self.budget.missed(metrics["drop_points"]) else Status.COMPLETE

    def write(self, tmp: Path, float_model: Any, model: Any, quantized: dict[str, Any]
              ) -> tuple[list[SavedArtifact], dict[str, Any]]:
        cfg, labels = self.config, self.images.labels
        saved = self.toolchain.save(model, tmp, self.precision)
        runner = self._runner(tmp / saved[0].name)  # metrics come from the files as saved, run as an app would
        try:
            top1 = runner_top1(runner, self.images, labels)
            metrics = {"top1": top1, "float_top1": self.float_top1,
                       "drop_points": round(100 * (self.float_top1 - top1), 4), "val_images": int(len(labels)),
                       **self.toolchain.describe(runner),
                       "latency_p50_ms": latency_p50_ms(runner, self.images[:1], cfg.latency_runs),
                       "build_s": round(self.build_s, 2), "max_drop": self.budget.max_drop,
                       "budget_source": self.budget.source, "method": self.precision, **quantized}
            if cfg.sensitivity_images:
                extra = {k: v for k, v in quantized.items() if k == "accuracy_control"}
                metrics.update(self.toolchain.reports(tmp, float_model, model, runner, self.images, extra,
                                                      self.precision, cfg.sensitivity_images))
            info = runner.describe().to_dict()
        finally:
            runner.close()
        write_json(tmp / "build.json", {
            "target": asdict(self.profile), "toolchain": self.toolchain.name, "precision": self.precision,
            "config": asdict(cfg), "runner_options": self.runner_options, "runner": info, "metrics": metrics,
            "source": ONNX_FILE, "versions": library_versions(), "preprocessing": self.manifest.preprocessing,
            **self.toolchain.build_record(self.profile, self.precision, cfg, tmp, saved)})
        return saved, metrics


# -- measurements -------------------------------------------------------------------------

def runner_top1(runner: Any, images: Any, labels: np.ndarray, decode_batch: int = 32) -> float:
    """Top-1 at batch 1 (the shape an edge app runs; also what gets timed) on an NCHW array or
    :class:`~edgetl.data.EvalImages` (decoded ``decode_batch`` images at a time): :func:`edgetl.evaluate.top1`."""
    from .evaluate import top1

    return top1(runner, images, labels, batch_size=1, decode_batch=decode_batch)


def checkpoint_top1(run_dir: Path, images: Any, labels: np.ndarray, batch_size: int = 32) -> float:
    """Top-1 of the run's float checkpoint on an NCHW array or :class:`~edgetl.data.EvalImages`."""
    from .backends.torch_eager import TorchRunner
    from .evaluate import top1

    runner = TorchRunner(run_dir / "checkpoint.pt")
    if not runner.artifact.is_file():
        raise RunFolderError(f"{run_dir} has no checkpoint.pt: the float model is the reference for the drop")
    return top1(runner, images, labels, batch_size=batch_size)

