"""The TensorRT toolchain: float ONNX -> the ONNX files a TensorRT engine is built from on the device.

No TensorRT here: the build writes what TensorRT consumes and measures it under ONNX Runtime on the CPU,
Q/DQ applied exactly as TensorRT computes them (:data:`QDQ_DISABLED_OPTIMIZERS`). For int8 it writes an
explicit-quantization Q/DQ ONNX (``model.qdq.onnx``, FP32 elsewhere: TensorRT 10.3 with ``--int8 --fp16``) and
its strongly typed twin (``model.qdq.fp16.onnx``, FP16 elsewhere: TensorRT >= 10.12 / 11, where precision lives
in the ONNX); for fp16 ``model.fp16.onnx``; for fp32 ``model.onnx``. build.json records the engine settings
and, for each TensorRT generation, the complete trtexec command; ``edgetl compile`` builds the engine on the device.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._io import sha256, write_json
from ..compress.quantize.ort_qdq import ORT_CPU_DISABLED_OPTIMIZERS
from ..errors import ConfigError, TargetError
from .base import TOOLCHAIN_OPTIONS, SavedArtifact, Toolchain
from .trt_settings import EngineSettings, Hardware

log = logging.getLogger(__name__)
ONNX_FILES = {"int8": ("model.qdq.onnx", "model.qdq.fp16.onnx"), "fp16": ("model.fp16.onnx",), "fp32": ("model.onnx",)}
"""Per precision: the file TensorRT < 10.12 builds with precision flags, then the strongly typed one (if other)."""
QDQ_DISABLED_OPTIMIZERS = (*ORT_CPU_DISABLED_OPTIMIZERS, "QDQSelectorActionTransformer")
"""Under these ONNX Runtime CPU options a Q/DQ ONNX (FP32, or its FP16 twin) computes what TensorRT does: every
Q/DQ applied exactly, the layers in float (TensorRT sums INT8 products in int32, exactly). With ONNX Runtime's
defaults, WeightBiasQuantization quantizes the biases so that QDQSelectorActionTransformer fuses DQ -> Conv -> Q
into QLinearConv, whose u8s8 kernel on x86 CPUs without VNNI adds pairs of products in int16 and saturates: the
build's figures would depend on the CPU (an AVX2-only EPYC put a 32 px Lite0's INT8 logits at 2.4 dB SQNR from
float instead of 18, and 72% top-1 agreement instead of 100%)."""


def qdq_options() -> dict[str, Any]:
    """ONNX Runtime runner options for a Q/DQ ONNX (see :data:`QDQ_DISABLED_OPTIMIZERS`), recorded with it."""
    return {"disabled_optimizers": list(QDQ_DISABLED_OPTIMIZERS)}


def engine_settings(profile: Any, config: Any) -> EngineSettings:
    """The profile's ``engine:`` defaults with the build options given for this build."""
    data = dict(profile.engine)
    for key in ("dla_core", "max_batch", "hardware_compatibility"):
        if getattr(config, key, None) is not None:
            data[key] = getattr(config, key)
    if getattr(config, "version_compatible", False):
        data["version_compatible"] = True
    settings = EngineSettings.from_dict(data, f"{profile.name}.yaml")
    if settings.opt_batch > settings.max_batch:
        raise ConfigError(f"--max-batch {settings.max_batch} is below the profile's opt_batch {settings.opt_batch}")
    return settings


class TensorRTToolchain(Toolchain):
    name = "tensorrt"
    runtime = "onnxruntime"
    """What measures the artifacts here; the engine itself runs under ``tensorrt`` on the device."""
    quantizer = "ort-qdq"
    title = "TensorRT"
    build_options = TOOLCHAIN_OPTIONS

    def device(self, profile: Any) -> str:
        return "cpu"

    def runner_options(self, profile: Any, precision: str) -> dict[str, Any]:
        return qdq_options() if precision == "int8" else {}

    def check(self, precision: str) -> None:
        from .._lazy import lazy_import
        from ..backends.onnxruntime import import_onnxruntime

        lazy_import("onnx", purpose="TensorRT targets")
        import_onnxruntime()
        if precision == "int8":
            from ..compress.quantize import get_backend

            get_backend(self.quantizer).check()

    def check_config(self, profile: Any, precision: str, config: Any, others: Iterable[Toolchain] = ()) -> None:
        super().check_config(profile, precision, config, others)
        hardware = Hardware.from_dict(profile.hardware, f"{profile.name}.yaml")
        hardware.check_dla(profile.name, config.dla_core)
        settings = engine_settings(profile, config)
        if hardware.platform == "jetson" and settings.hardware_compatibility != "none":
            raise TargetError(f"{profile.name}: TensorRT has no hardware-compatible engines on Jetson (JetPack); "
                              "the engine is built on the module, so drop --hardware-compatibility")
        if config.calibration is not None and precision != "int8":
            raise ConfigError(f"--calibration applies to int8 only, not {precision}")

    def convert(self, onnx_path: Path) -> Any:
        import onnx

        return onnx.load(str(onnx_path))

    def runner(self, model_or_path: Any, device: str, options: dict[str, Any]) -> Any:
        from ..backends.onnxruntime import OnnxRuntimeRunner

        if isinstance(model_or_path, (str, Path)):
            return OnnxRuntimeRunner(model_or_path, **options).load()
        return _memory_runner(model_or_path, **options)

    def save(self, model: Any, folder: Path, precision: str) -> list[SavedArtifact]:
        import onnx

        from ..compress.quantize.ort_qdq import to_fp16

        if precision == "int8":
            onnx.save(model, str(folder / ONNX_FILES["int8"][0]))
            onnx.save(to_fp16(model), str(folder / ONNX_FILES["int8"][1]))
            return [SavedArtifact(ONNX_FILES["int8"][0], {"format": "onnx-qdq", "deploy_runtime": "tensorrt"}),
                    SavedArtifact(ONNX_FILES["int8"][1], {"format": "onnx-qdq-fp16", "deploy_runtime": "tensorrt",
                                                          "onnxruntime_options": qdq_options()})]
        name = ONNX_FILES[precision][0]
        onnx.save(to_fp16(model) if precision == "fp16" else model, str(folder / name))
        return [SavedArtifact(name, {"format": f"onnx-{precision}", "deploy_runtime": "tensorrt"})]

    def describe(self, runner: Any) -> dict[str, Any]:
        info = runner.describe()
        return {"executed_precision": f"{info.precision} (ONNX Runtime CPU)", "threads": info.threads}

    def reports(self, folder: Path, float_model: Any, model: Any, runner: Any, images: Any,
                extra: dict[str, Any], precision: str, sensitivity_images: int) -> dict[str, Any]:
        """int8: the layer sensitivity ranking and the FP16 Q/DQ twin checked; fp16: agreement with float."""
        from ..compress.quantize import get_backend
        from ..compress.quantize.ort_qdq import check_qdq_rules, quantized_layers

        metrics: dict[str, Any] = {}
        float_runner = self.runner(float_model, "cpu", {})
        try:
            if precision == "int8":
                violations = check_qdq_rules(model)
                if violations:
                    raise TargetError(f"the Q/DQ ONNX breaks TensorRT's placement rules: {violations[0]}")
                ranking = get_backend(self.quantizer).rank_layers(float_model, model, images[:sensitivity_images])
                layers = quantized_layers(model)
                reverted = (extra.get("accuracy_control") or {}).get("reverted_to_float", [])
                report = {"metric": "SQNR of each layer's own output (lowest first)", "ranking": ranking,
                          "quantized_layers": layers, "modules": module_names(float_model, [*ranking, *reverted]),
                          **extra}
                write_json(folder / "sensitivity.json", report)
                twin = self.runner(folder / ONNX_FILES["int8"][1], "cpu", qdq_options())
                metrics["fp16_twin"] = _agreement(float_runner, twin, runner, images)
                metrics.update(quantized_layers=len(layers), worst_layers=[report["modules"][n] for n in ranking[:3]])
                if reverted:
                    metrics["float_modules"] = [report["modules"][n] for n in reverted]
            elif precision == "fp16":
                metrics["fp16_check"] = _agreement(float_runner, runner, None, images)
        finally:
            float_runner.close()
        return metrics

    def build_record(self, profile: Any, precision: str, config: Any, folder: Path,
                     saved: list[SavedArtifact]) -> dict[str, Any]:
        import onnx

        from .tensorrt_engine import trtexec_commands, trtexec_notes

        names = ONNX_FILES[precision]
        files = {"precision-flags": names[0], "strongly-typed": names[-1]}
        graph = onnx.load(str(folder / names[0]), load_external_data=False).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        settings, hardware = engine_settings(profile, config), Hardware.from_dict(profile.hardware)
        sparse = sparse_2_4_weights(onnx.load(str(folder / names[0])))
        if sparse["sparse"] and not settings.sparse_weights:  # a 2:4-pruned run: let TensorRT use sparse kernels
            settings = EngineSettings.from_dict({**settings.to_dict(), "sparse_weights": True})
        commands = trtexec_commands(files, settings, precision, graph.input[0].name, tuple(dims[1:]), hardware)
        return {"tensorrt": {
            "precision": precision, "engine": settings.to_dict(), "hardware": vars(hardware),
            "input": {"name": graph.input[0].name, "shape": dims[1:]}, "onnx": files, "weights_2_4": sparse,
            "sha256": {n: sha256(folder / n) for n in names}, "trtexec": commands,
            "trtexec_notes": trtexec_notes(files, settings, precision),
            "compile": "on the device, in a copy of this folder: edgetl compile . (or run the trtexec line of its "
                       "TensorRT version)"}}


def sparse_2_4_weights(model: Any, threshold: float = 0.9) -> dict[str, Any]:
    """Whether the model's Conv/Gemm weights follow NVIDIA's 2:4 pattern (at most 2 non-zeros in every 4
    consecutive input channels, per output channel and kernel position): ``{"layers", "sparse_layers",
    "sparse"}`` with ``sparse`` when at least ``threshold`` of the eligible layers do."""
    from onnx import numpy_helper

    from ..compress.prune.sparsity import count_2_4_groups

    weights = {init.name: init for init in model.graph.initializer}
    eligible = sparse = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        if w.ndim not in (2, 4) or w.shape[1] % 4 or w.shape[1] < 4:
            continue
        ok, groups = count_2_4_groups(w)
        eligible += 1
        sparse += ok == groups
    return {"layers": eligible, "sparse_layers": sparse, "sparse": bool(eligible and sparse >= threshold * eligible)}


def module_names(model: Any, nodes: list[str]) -> dict[str, str]:
    """ONNX node -> the PyTorch module it came from (its weight initializer's name, e.g. ``blocks.5.3.conv_pwl``),
    or the node name itself when the exporter kept no such name."""
    weights = {init.name for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.name in nodes and len(node.input) > 1 and node.input[1] in weights:
            found[node.name] = node.input[1].removesuffix(".weight")
    return {name: found.get(name, name) for name in nodes}


def _agreement(reference: Any, candidate: Any, quantized: Any, images: Any) -> dict[str, Any]:
    """Top-1 agreement and max |logit difference| of ``candidate`` vs the float ``reference`` (and vs
    ``quantized``, the FP32 Q/DQ model, when given); a candidate ONNX Runtime cannot run is reported, not hidden."""
    from ..data import image_batches

    try:
        pairs = [(reference.infer(b), candidate.infer(b), quantized.infer(b) if quantized else None)
                 for b in image_batches(images, 16)]
    except Exception as exc:  # noqa: BLE001 — ONNX Runtime's own error types; the reason is recorded
        return {"runs_under_onnxruntime": False, "reason": str(exc).splitlines()[0][:200]}
    ref = np.concatenate([p[0] for p in pairs])
    out = np.concatenate([p[1] for p in pairs]).astype(np.float32)
    result = {"runs_under_onnxruntime": True, "images": int(len(ref)),
              "top1_agreement_vs_float": float(np.mean(ref.argmax(1) == out.argmax(1))),
              "max_abs_logit_diff_vs_float": float(np.abs(ref - out).max())}
    if quantized is not None:
        q = np.concatenate([p[2] for p in pairs])
        top2 = np.sort(q, axis=1)[:, -2:] if q.shape[1] > 1 else np.concatenate([q, q], axis=1)
        flips = q.argmax(1) != out.argmax(1)
        ties = (top2[:, 1] - top2[:, 0]) <= 2 * np.abs(q - out).max(axis=1)  # the same rule as the ONNX parity
        result.update(top1_agreement_vs_fp32_qdq=float(np.mean(~flips)),
                      decisive_flips_vs_fp32_qdq=int((flips & ~ties).sum()),
                      max_abs_logit_diff_vs_fp32_qdq=float(np.abs(q - out).max()))
    return result


def _memory_runner(model: Any, **options: Any) -> Any:
    """An ONNX Runtime runner for an in-memory ``onnx.ModelProto``, through a temporary file removed with the runner."""
    import onnx

    from ..backends.onnxruntime import OnnxRuntimeRunner

    handle, name = tempfile.mkstemp(suffix=".onnx", prefix="edgetl-")
    os.close(handle)
    onnx.save(model, name)
    runner = OnnxRuntimeRunner(name, **options)
    weakref.finalize(runner, Path(name).unlink, missing_ok=True)
    return runner.load()
