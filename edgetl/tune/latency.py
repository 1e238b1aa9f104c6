"""The latency objective of ``top1+latency`` studies: a trial's model, measured batch 1 where it will run.

Without a target, the trial's float ONNX model under onnxruntime on this CPU (quick, no build). With
``latency_target`` (``intel-cpu``, ``jetson``, ...), the trial is built for that target exactly as
``edgetl export --target`` builds it (INT8 calibrated on its training split), TensorRT targets also
get their engine compiled on this device, and the artifact is timed by ``edgetl bench``'s own
measuring code with that target's runtime. A target whose runtime is not installed here is refused
before the first trial: run the study on the device.

:func:`model_latency_ms` is the quick figure for a model that is not a run yet (``edgetl prune
--max-latency`` times each pruning step with it): built in memory by the target's toolchain, timed as a
target build times its own quick latency (:func:`edgetl.evaluate.latency_p50_ms`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, TargetError
from ..run.keys import BENCH, Precision


def check_latency_target(target: str, precision: str | None) -> str:
    """The precision the target builds at; a ConfigError naming what is missing when it cannot run here."""
    from ..backends import runtime_spec
    from ..build import TargetBuildConfig, check_build_config

    profile, precision, _ = check_build_config(TargetBuildConfig(target=target, precision=precision))
    status = runtime_spec(profile.runtime).status()
    if not status["installed"]:
        raise ConfigError(f"latency on {target} is measured with {profile.runtime}, which is not installed here "
                          f"({status['install']}): run the study on the device, or leave out --latency-target")
    return precision


def target_latency_ms(run_dir: str | Path, target: str, precision: str | None) -> float:
    """Batch-1 p50 (ms) of the run built for ``target``, timed by edgetl bench with the target's runtime."""
    from ..build import TargetBuildConfig, build_target
    from ..export import ExportConfig, export_onnx
    from ..profiles import load_target

    run_dir = Path(run_dir)
    export_onnx(run_dir, ExportConfig(parity_images=16))
    built = build_target(run_dir, TargetBuildConfig(target=target, precision=precision, sensitivity_images=0,
                                                    latency_runs=0))
    artifact = built.path
    if load_target(target).runtime == "tensorrt":  # the export is Q/DQ ONNX: the engine is what runs
        from ..toolchains.tensorrt_engine import compile_engine
        from ..toolchains.trt_settings import CompileConfig

        artifact = compile_engine(run_dir, CompileConfig(target=target, precision=precision)).engine
    return bench_p50_ms(artifact, run_dir, target)


def bench_p50_ms(artifact: Path, run_dir: Path, where: str) -> float:
    """Batch-1 ``p50_stable_ms`` of ``artifact`` by edgetl bench's measuring code (report kept in RUN/bench)."""
    from ..bench import BenchConfig, benchmark

    config = BenchConfig(rounds=3, iterations=20, round_time_s=1.0, accuracy=False, memory=False, true_fp32=False,
                         limit=8, output=str(run_dir / str(BENCH)))
    report = benchmark(artifact, config, progress=False)
    for row in report.results:
        if row["status"] == "ok" and row["latency"]:
            return round(float(row["latency"][0]["p50_stable_ms"]), 3)
    reasons = "; ".join(str(r.get("reason")) for r in report.results)
    raise TargetError(f"{artifact} could not be timed on {where}: {reasons}")


def onnx_latency_ms(run_dir: str | Path) -> float:
    """Batch-1 latency (ms) of the run's float ONNX model under onnxruntime on this CPU (exported here)."""
    from ..export import ExportConfig, export_onnx

    path = export_onnx(run_dir, ExportConfig(parity_images=16)).path
    return bench_p50_ms(Path(path), Path(run_dir), "onnxruntime on this CPU")


def model_latency_ms(model: Any, spec: Any, target: str, calibration: list, image: Any, *,
                     precision: str | None = None, runs: int = 50) -> float:
    """Batch-1 p50 (ms) of the torch ``model`` built for ``target`` by its own toolchain at ``precision`` (default:
    the target's), INT8 calibrated on the labelled ``calibration`` samples (a few: enough for a latency figure,
    not for an accuracy one), timed on ``image`` (a batch of one, preprocessed by ``spec``)."""
    import tempfile

    from ..build import TargetBuildConfig, check_build_config, quantization_block
    from ..evaluate import latency_p50_ms
    from ..export import ExportConfig, torch_to_onnx

    config = TargetBuildConfig(target=target, precision=precision)
    profile, precision, toolchain = check_build_config(config)
    with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        torch_to_onnx(model.eval(), path, spec.input_size, ExportConfig())
        built = toolchain.convert(path)
        if precision == Precision.INT8:
            from ..compress.quantize import get_backend

            backend = get_backend(toolchain.quantizer)
            built = backend.quantize(built, calibration, spec,
                                     backend.settings(quantization_block(profile, config), f"{profile.name}.yaml"))
        runner = toolchain.runner(built, toolchain.device(profile), toolchain.runner_options(profile, precision))
        try:
            return latency_p50_ms(runner, image, runs) or 0.0
        finally:
            runner.close()
