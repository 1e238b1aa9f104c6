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
from typing import Any

import numpy as np

from ._io import staging_dir, write_json
from .errors import AccuracyBudgetError, ConfigError, RunFolderError, TargetError
from .export import CHECKPOINT, ONNX_FILE
from .run.integrity import require_current
from .run.manifest import Manifest, library_versions
from .run.stage import stage, verify_inputs
from .profiles import TargetProfile, load_target

log = logging.getLogger(__name__)
BUDGET_MISSED = "budget-missed"


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
    max_drop: float | None = None
    """Allowed top-1 drop on val vs the PyTorch float model, in points (None: no budget)."""
    data: str | None = None
    """Labelled folder to evaluate on (default: the run's val split)."""
    accuracy_control: bool = True
    """When plain INT8 misses ``max_drop``, run NNCF's accuracy-controlled quantization."""
    max_reverted_layers: int | None = None
    """Accuracy control: most layers that may return to float (None: no limit)."""
    sensitivity_images: int = 8
    """Val images for the per-layer INT8 sensitivity report (0: skip it)."""
    latency_runs: int = 50
    """Timed batch-1 inferences for the quick latency figure (0: skip)."""
    seed: int = 0
    """Seed for calibration sampling."""

    def __post_init__(self) -> None:
        if self.calib_size < 1:
            raise ConfigError(f"calib_size must be at least 1, got {self.calib_size}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise ConfigError(f"max_drop is in top-1 points (0-100), got {self.max_drop}")
        if self.sensitivity_images < 0 or self.latency_runs < 0:
            raise ConfigError("sensitivity_images and latency_runs cannot be negative")


@dataclass
class TargetBuildResult:
    stage: str
    path: Path
    """The runnable artifact (OpenVINO: ``model.xml``)."""
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)


def stage_name(target: str, precision: str) -> str:
    return f"{target}:{precision}"


def build_target(run_dir: str | Path, config: TargetBuildConfig | None = None, *,
                 verify: bool = True) -> TargetBuildResult:
    """Build ``run_dir`` for ``config.target`` at ``config.precision`` and record it in the manifest.

    The float ONNX model and checkpoint are checked against their recorded sha256s (``verify=False``
    skips that), and an ONNX export older than the checkpoint is refused as stale.
    """
    config = config or TargetBuildConfig()
    profile = load_target(config.target)
    precision = profile.check_precision(config.precision)
    builder = _BUILDERS.get(profile.runtime)
    if builder is None:
        raise TargetError(f"target {profile.name} needs runtime {profile.runtime!r}, which edgetl cannot build for yet")
    manifest = Manifest.load(run_dir)
    manifest.require("onnx", f"run `edgetl export {run_dir}` first")
    require_current(manifest, "onnx")
    inputs = verify_inputs(manifest, [ONNX_FILE, CHECKPOINT], verify=verify)
    return builder(manifest.run_dir, manifest, profile, precision, config, inputs)


# -- OpenVINO -----------------------------------------------------------------------------

def _build_openvino(run_dir: Path, manifest: Manifest, profile: TargetProfile, precision: str,
                    config: TargetBuildConfig, inputs: dict[str, str]) -> TargetBuildResult:
    from .backends.openvino import convert_onnx, import_openvino
    from .compress import quantize as q
    from .data import load_array, run_eval_samples
    from .preprocessing import PreprocessSpec

    import_openvino()  # fail with the install hint before any work
    if precision == "int8":
        q.import_nncf()
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    images, labels = load_array(run_eval_samples(manifest, config.data), spec)
    calib = (q.calibration_samples(manifest, config.calib_data, config.calib_size, config.seed)
             if precision == "int8" else [])
    float_top1 = _torch_top1(run_dir, images, labels)
    name = stage_name(profile.name, precision)
    final = run_dir / profile.name / precision
    # the runner settings an app should use: a true FP32 artifact needs the f32 hint on BF16 CPUs
    runner_options = {**profile.runner_options, **({"precision_hint": "f32"} if precision == "fp32" else {})}
    options = {**asdict(config), "precision": precision, "target": profile.name}
    with stage(manifest, name, options, inputs, busy_hint="another build of it is running") as st:
        start = time.perf_counter()
        float_model = convert_onnx(run_dir / ONNX_FILE)
        model, extra = float_model, {}
        if precision == "int8":
            model, extra = _quantize(float_model, calib, spec, images, labels, float_top1, profile, config,
                                     runner_options)
        build = _Build(manifest, profile, precision, config, runner_options, images, labels, float_top1,
                       time.perf_counter() - start)
        with staging_dir(final) as tmp:
            metrics = build.write(tmp, float_model, model, extra)
        st.artifact(final / "model.xml", runtime="openvino", precision=precision, format="openvino-ir",
                    device=profile.device, executed_precision=metrics["executed_precision"],
                    runner_options=runner_options)
        st.artifact(final / "model.bin", format="openvino-weights")
        for extra_file in ("sensitivity.json", "build.json"):
            if (final / extra_file).is_file():
                st.artifact(final / extra_file)
        st.metrics.update(metrics)
        missed = config.max_drop is not None and metrics["drop_points"] > config.max_drop
        st.status = BUDGET_MISSED if missed else "complete"
    if missed:
        raise AccuracyBudgetError(
            f"{name}: top-1 drop {metrics['drop_points']:.2f} points exceeds --max-drop {config.max_drop} "
            f"({100 * metrics['top1']:.2f}% vs float {100 * float_top1:.2f}%); the best model found is kept in "
            f"{final} (status budget-missed). Try more or more representative --calib-data, a larger --max-drop, "
            "or fp16")
    log.info("wrote %s: top-1 %.2f%% (drop %.2f points), runs in %s, p50 %.2f ms", final / "model.xml",
             100 * metrics["top1"], metrics["drop_points"], metrics["executed_precision"],
             metrics["latency_p50_ms"] or float("nan"))
    return TargetBuildResult(name, final / "model.xml", "complete", metrics)


@dataclass
class _Build:
    """What an OpenVINO build writes into its staging folder, measured from the files as saved."""

    manifest: Manifest
    profile: TargetProfile
    precision: str
    config: TargetBuildConfig
    runner_options: dict[str, Any]
    images: np.ndarray
    labels: np.ndarray
    float_top1: float
    build_s: float

    def write(self, tmp: Path, float_model: Any, model: Any, extra: dict[str, Any]) -> dict[str, Any]:
        from .backends.openvino import OpenVINORunner, save_ir
        from .compress import quantize as q

        cfg, images, labels = self.config, self.images, self.labels
        save_ir(model, tmp / "model.xml", compress_to_fp16=self.precision == "fp16")
        # metrics come from the files as saved, run as an app would run them
        with OpenVINORunner(tmp / "model.xml", **self.runner_options) as runner:
            top1 = _top1(runner, images, labels)
            info = runner.describe()
            runner_layers = runner.layer_precisions()
            layer_precisions = runner.layer_precisions(original_names=True)
            latency = _latency_p50(runner, images[:1], cfg.latency_runs)
        metrics = {
            "top1": top1, "float_top1": self.float_top1, "drop_points": round(100 * (self.float_top1 - top1), 4),
            "val_images": int(len(labels)), "executed_precision": info.precision,
            "inference_precision_hint": info.extra["inference_precision_hint"],
            "compute_layers": info.extra["compute_layers"], "threads": info.threads,
            "latency_p50_ms": latency, "build_s": round(self.build_s, 2), "max_drop": cfg.max_drop,
            **extra.pop("metrics", {}),
        }
        if self.precision == "int8" and cfg.sensitivity_images:
            report = q.sensitivity_report(float_model, model, images[:cfg.sensitivity_images], layer_precisions)
            report["float_compute_layers"] = q.float_compute_layers(runner_layers)
            report.update(extra)
            write_json(tmp / "sensitivity.json", report)
            metrics["worst_layers"] = report["worst_layers"][:3]
        write_json(tmp / "build.json", {
            "target": asdict(self.profile), "precision": self.precision, "config": asdict(cfg),
            "runner_options": self.runner_options, "runner": info.to_dict(), "metrics": metrics,
            "source": ONNX_FILE, "versions": library_versions(), "preprocessing": self.manifest.preprocessing})
        return metrics


def _quantize(float_model: Any, calib: list, spec: Any, images: np.ndarray, labels: np.ndarray, float_top1: float,
              profile: TargetProfile, config: TargetBuildConfig, runner_options: dict[str, Any]
              ) -> tuple[Any, dict[str, Any]]:
    """Plain PTQ, then accuracy control if PTQ misses the budget; the better model and what happened."""
    from .backends.openvino import OpenVINORunner
    from .compress import quantize as q

    settings = q.QuantizeSettings.from_dict(profile.quantization)
    model = q.quantize_ptq(float_model, calib, spec, settings)
    ptq_runner = OpenVINORunner.from_model(model, **runner_options)
    ptq_top1 = _top1(ptq_runner, images, labels)
    metrics: dict[str, Any] = {"calib_images": len(calib), "ptq_top1": ptq_top1,
                               "ptq_drop_points": round(100 * (float_top1 - ptq_top1), 4)}
    extra: dict[str, Any] = {"metrics": metrics}
    if config.max_drop is None or metrics["ptq_drop_points"] <= config.max_drop or not config.accuracy_control:
        return model, extra
    log.info("plain INT8 drops %.2f points (budget %.2f): running NNCF accuracy control",
             metrics["ptq_drop_points"], config.max_drop)
    # NNCF measures the drop against the OpenVINO float model; move the budget to that baseline
    ov_float_top1 = _top1(OpenVINORunner.from_model(float_model, **runner_options), images, labels)
    nncf_budget = max(0.0, config.max_drop / 100 - (float_top1 - ov_float_top1))
    controlled = q.quantize_accuracy_control(float_model, calib, spec, images, labels, nncf_budget, settings,
                                             max_iterations=config.max_reverted_layers)
    ac_runner = OpenVINORunner.from_model(controlled, **runner_options)
    ac_top1 = _top1(ac_runner, images, labels)
    ptq_layers, ac_layers = ptq_runner.layer_precisions(), ac_runner.layer_precisions()
    reverted = sorted(n for n, p in ac_layers.items() if p != "int8" and ptq_layers.get(n) == "int8")
    ptq_ms, ac_ms = _latency_p50(ptq_runner, images[:1], config.latency_runs or 20), \
        _latency_p50(ac_runner, images[:1], config.latency_runs or 20)
    metrics["accuracy_control"] = {
        "top1": ac_top1, "drop_points": round(100 * (float_top1 - ac_top1), 4), "reverted_to_float": reverted,
        "ptq_latency_p50_ms": ptq_ms, "latency_p50_ms": ac_ms,
        "slowdown_vs_ptq": round(ac_ms / ptq_ms, 3) if ptq_ms and ac_ms else None,
        "nncf_max_drop": nncf_budget}
    extra["accuracy_control"] = metrics["accuracy_control"]
    log.info("accuracy control: top-1 %.2f%% with %d layer(s) in float, p50 %.2f -> %.2f ms", 100 * ac_top1,
             len(reverted), ptq_ms or float("nan"), ac_ms or float("nan"))
    return (controlled, extra) if ac_top1 >= ptq_top1 else (model, extra)


_BUILDERS = {"openvino": _build_openvino}


# -- measurements -------------------------------------------------------------------------

def _top1(runner: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 at batch 1 (the shape an edge app runs; also what gets timed)."""
    hits = sum(int(runner.infer(images[i:i + 1]).argmax(1)[0] == labels[i]) for i in range(len(labels)))
    return hits / len(labels)


def _torch_top1(run_dir: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 32) -> float:
    from .backends.torch_eager import TorchRunner

    runner = TorchRunner(run_dir / "checkpoint.pt")
    if not runner.artifact.is_file():
        raise RunFolderError(f"{run_dir} has no checkpoint.pt: the float model is the reference for the drop")
    logits = np.concatenate([runner.infer(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return float(np.mean(logits.argmax(1) == labels))


def _latency_p50(runner: Any, batch: np.ndarray, runs: int, warmup: int = 10) -> float | None:
    """Median wall time of ``runs`` synchronous inferences of ``batch``, in ms (a quick figure, not bench)."""
    if not runs:
        return None
    for _ in range(warmup):
        runner.infer(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.infer(batch)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)
