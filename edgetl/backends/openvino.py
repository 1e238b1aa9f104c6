"""OpenVINO runner (CPU) and the ONNX -> OpenVINO IR conversion.

What executes is read back from the compiled model, never assumed: on a BF16-capable CPU an
"FP32" IR runs in BF16 unless ``INFERENCE_PRECISION_HINT=f32`` is set, and an INT8 IR may keep
some layers in float. :meth:`OpenVINORunner.describe` reports the precision of the compute layers
(convolutions, fully connected) as the CPU plugin compiled them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, TargetError
from .base import Runner, RunnerInfo

# runtime-model layer types that carry the arithmetic (their precision is "the" precision)
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")
# OpenVINO element type names -> edgetl precision names
_PRECISION_NAMES = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "f16": "fp16",
                    "float16": "fp16", "u8": "int8", "i8": "int8"}
PRECISION_HINTS = (None, "f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# devices that schedule onto others, named after the colon: AUTO:GPU,CPU / HETERO:GPU,CPU
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


def import_openvino():
    """``openvino``, or :class:`MissingBackendError` with the install hint."""
    from ._registry import RUNTIMES

    return RUNTIMES["openvino"].import_library()


def check_device(device: str, available: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`TargetError` unless OpenVINO's ``available`` devices can serve ``device``.

    ``GPU`` is served by ``GPU.0``; ``AUTO`` needs nothing; ``AUTO:GPU,CPU`` needs each device it names.
    """
    kind, _, listed = device.partition(":")
    if kind in _VIRTUAL_DEVICES:
        wanted = [d.split("(")[0].strip() for d in listed.split(",") if d.strip()]
    else:
        wanted = [device]
    missing = [d for d in wanted if not any(a == d or a.split(".")[0] == d for a in available)]
    if missing:
        raise TargetError(f"OpenVINO device {missing[0]!r} is not available on this machine (OpenVINO sees: "
                          f"{', '.join(available) or 'none'}): build and run for {missing[0]} on a machine that has "
                          "it, or choose a target for this one (`edgetl doctor` lists its devices)")


def precision_name(element_type: Any) -> str:
    """``fp32``/``bf16``/``fp16``/``int8`` for an OpenVINO element type or its name."""
    name = getattr(element_type, "get_type_name", lambda: str(element_type))()
    return _PRECISION_NAMES.get(str(name).lower(), str(name).lower())


# -- conversion ---------------------------------------------------------------------------

def convert_onnx(onnx_path: str | Path):
    """The float ONNX model as an in-memory ``openvino.Model`` (weights stay FP32)."""
    ov = import_openvino()
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO's frontend errors are multi-line C++ traces
        from ..errors import RunFolderError

        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RunFolderError(f"{onnx_path} could not be read as an ONNX model ({first[:160]}): it is damaged; "
                             "re-run `edgetl export` for its run") from None


def save_ir(model: Any, xml_path: str | Path, *, compress_to_fp16: bool = False) -> Path:
    """Write ``model`` as IR (``.xml`` + ``.bin``); FP16 weights only when asked (OpenVINO's default is FP16)."""
    ov = import_openvino()
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return Path(xml_path)


def ir_weight_precision(model: Any) -> str:
    """What the IR stores: ``int8`` (quantized), ``fp16`` (compressed weights) or ``fp32``."""
    types = Counter(op.get_type_name() for op in model.get_ops())
    if types.get("FakeQuantize"):
        return "int8"
    const_types = {precision_name(op.get_output_element_type(0)) for op in model.get_ops()
                   if op.get_type_name() == "Constant"}
    return "fp16" if "fp16" in const_types else "fp32"


def compiled_layer_precisions(compiled: Any) -> dict[str, str]:
    """``{layer name: precision}`` for the compute layers of a compiled model, as the plugin runs them.

    Names are the runtime (fused) layer names; each covers one or more original ops.
    """
    layers = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            layers[op.get_friendly_name()] = precision_name(info["runtimePrecision"].astype(str))
    return layers


def original_layer_precisions(compiled: Any) -> dict[str, str]:
    """``{original op name: precision}`` for every op fused into a compute layer of ``compiled``."""
    layers = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            precision = precision_name(info["runtimePrecision"].astype(str))
            for name in info["originalLayersNames"].astype(str).split(","):
                layers[name] = precision
    return layers


def summarise_precisions(layers: dict[str, str]) -> str:
    """``int8`` / ``bf16`` / ``int8+bf16`` (most common first) from per-layer precisions."""
    counts = Counter(layers.values())
    return "+".join(name for name, _ in counts.most_common()) or "unknown"


# -- runner -------------------------------------------------------------------------------

class OpenVINORunner(Runner):
    """Runs an OpenVINO IR (``.xml``) or an ONNX file with OpenVINO on one device (default CPU).

    The model is compiled for the exact shape of the incoming batch (static shapes give the CPU
    plugin its fastest kernels); a new batch size recompiles once and is cached.
    """

    runtime = "openvino"
    option_names = ("threads", "precision_hint", "performance_hint", "streams", "device")

    def __init__(self, artifact: str | Path, *, threads: int | None = None, precision_hint: str | None = None,
                 performance_hint: str | None = "LATENCY", streams: int | None = None, device: str = "CPU",
                 **options: Any) -> None:
        super().__init__(artifact, threads=threads, **options)
        if not isinstance(device, str) or not device.strip():
            raise ConfigError(f"openvino runner device must be an OpenVINO device name such as CPU or GPU, "
                              f"not {device!r}")
        if precision_hint not in PRECISION_HINTS:
            raise ConfigError(f"precision_hint must be one of {PRECISION_HINTS}, not {precision_hint!r}")
        if performance_hint is not None and performance_hint not in PERFORMANCE_HINTS:
            raise ConfigError(f"performance_hint must be one of {PERFORMANCE_HINTS}, not {performance_hint!r}")
        if streams is not None and streams < 1:
            raise ConfigError("streams must be at least 1")
        self.precision_hint = precision_hint
        self.performance_hint = performance_hint
        self.streams = streams
        self.device = device.strip().upper()
        self.core = self.model = None
        self._compiled: dict[tuple[int, ...], tuple[Any, Any]] = {}  # shape -> (compiled model, request)
        self._last: Any = None

    def config(self) -> dict[str, Any]:
        """The compile-time properties this runner sets (unset ones keep OpenVINO's defaults)."""
        cfg: dict[str, Any] = {}
        if self.precision_hint:
            cfg["INFERENCE_PRECISION_HINT"] = self.precision_hint
        if self.performance_hint:
            cfg["PERFORMANCE_HINT"] = self.performance_hint
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.streams:
            cfg["NUM_STREAMS"] = int(self.streams)
        return cfg

    @classmethod
    def from_model(cls, model: Any, **options: Any) -> OpenVINORunner:
        """A runner over an in-memory ``openvino.Model`` (e.g. a quantization candidate not yet saved)."""
        runner = cls("<in-memory>", **options)
        runner.core, runner.model = runner._new_core(), model
        runner._compile_first()
        runner.loaded = True
        return runner

    def _new_core(self) -> Any:
        """An ``openvino.Core``, after checking that this machine has the device (never a silent CPU run)."""
        core = import_openvino().Core()
        check_device(self.device, list(core.available_devices))
        return core

    def _load_impl(self) -> None:
        self.core = self._new_core()
        self.model = self.core.read_model(str(self.artifact))
        self._compile_first()

    def _compile_first(self) -> None:
        shape = self.model.inputs[0].get_partial_shape()
        # compile now for batch 1 (or the model's own static shape) so load() carries the cost
        first = [1 if dim.is_dynamic else dim.get_length() for dim in shape]
        self._compile(tuple(first))

    def _compile(self, shape: tuple[int, ...]):
        if shape not in self._compiled:
            model = self.model
            if tuple(d.get_length() if d.is_static else -1 for d in model.inputs[0].get_partial_shape()) != shape:
                model = model.clone()
                model.reshape({model.inputs[0]: list(shape)})
            compiled = self.core.compile_model(model, self.device, self.config())
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        self._last = self._compiled[shape][0]
        return self._compiled[shape]

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        _, request = self._compile(tuple(batch.shape))
        request.infer({0: batch})
        return request.get_output_tensor(0).data.copy()

    def _describe_impl(self) -> RunnerInfo:
        ov = import_openvino()
        compiled = self._last
        layers = compiled_layer_precisions(compiled)
        counts = Counter(layers.values())
        hint = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        return RunnerInfo(
            runtime="openvino", version=ov.get_version(), device=self.device,
            precision=summarise_precisions(layers), threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
            extra={"inference_precision_hint": hint, "precision_hint_requested": self.precision_hint,
                   "performance_hint": getattr(compiled.get_property("PERFORMANCE_HINT"), "name", None),
                   "streams": int(compiled.get_property("NUM_STREAMS")),
                   "model_precision": ir_weight_precision(self.model),
                   "compute_layers": dict(counts)})

    def layer_precisions(self, original_names: bool = False) -> dict[str, str]:
        """Per compute layer, the precision the plugin runs it in; keyed by runtime (fused) layer
        names, or by the model's own op names when ``original_names``."""
        self.load()
        return (original_layer_precisions if original_names else compiled_layer_precisions)(self._last)

    def close(self) -> None:
        self._compiled.clear()
        self._last = self.model = self.core = None
        super().close()
