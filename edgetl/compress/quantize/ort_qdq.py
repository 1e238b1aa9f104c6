"""ONNX Runtime Q/DQ INT8 quantization: the explicit-quantization ONNX TensorRT builds (``--target jetson``).

``quantize_static`` (after ``quant_pre_process``) with Model-Optimizer's settings places the Q/DQ; a
post-pass (:func:`.qdq_graph.arrange`) moves them to where TensorRT fuses them (residual Adds, kept-float
layers) and :func:`check_qdq_rules` verifies the result. :func:`to_fp16` makes the FP16 variants a
strongly typed TensorRT (10.12+, 11) build needs.

Per-channel axes are ONNX Runtime's defaults, all on the output channel: Conv 0, ConvTranspose 1, Gemm 0
with ``transB=1`` (else 1), MatMul the last axis of B.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError, MissingBackendError, ModelError, did_you_mean
from .backend import QuantizerBackend
from .calibration import CalibrationImages
from .qdq_graph import (
    QDQ_OPS,
    STANDARD_DOMAINS,
    WEIGHTED_OPS,
    GraphIndex,
    arrange,
    check_qdq_rules,
    keep_float_nodes,
    name_nodes,
    quantized_layers,
    residual_adds,
    toposort,
)

log = logging.getLogger(__name__)

__all__ = ["ORT_CPU_DISABLED_OPTIMIZERS", "OrtQDQ", "QDQSettings", "check_qdq_rules", "quantized_layers", "to_fp16"]

ORT_CPU_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)
"""Pass as ``disabled_optimizers`` to run an FP16 Q/DQ model on ONNX Runtime CPU (1.32): that transformer
quantizes the float bias to int32 and computes ``round(bias / (x_scale * w_scale))`` through an fp16 Cast,
so large quotients saturate at 65504 and lose integer precision above 2048 (logits come out wrong).
TensorRT does not run it. It matters for FP32 Q/DQ models too: it lets QDQSelectorActionTransformer fuse
DQ->Conv->Q into an INT8 Conv that saturates 16-bit pair sums on x86 CPUs without VNNI;
:data:`edgetl.toolchains.tensorrt.QDQ_DISABLED_OPTIMIZERS` turns both off."""
ORT_TESTED = "1.32"
"""The onnxruntime this backend was written against; ``quantize_static(calibration_cache_path=)`` arrived
in 2026 (microsoft/onnxruntime#28221), older versions are refused with this as the version to install."""
CALIBRATIONS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
AUTO = "auto"
"""The calibration setting that chooses among :data:`CALIBRATIONS` per model."""
ENTROPY_BINS = (512, 128)
"""Entropy (KL) calibration: histogram bins over [-max, max] and quantized bins. ONNX Runtime's KL search
is pure Python, its cost ~ bins squared: (512, 128) takes ~0.1 s a tensor and searches thresholds down to a
quarter of the max (255 quantized bins, true int8 resolution, would need 1024 bins to reach as far: 3x the
time). ``quantize_static``'s own (128, 128) leaves one candidate, the min-max range."""
CALIB_CHUNK = 16
"""Calibration images per ONNX Runtime run (histogram calibrators hold every activation of a chunk)."""


def import_ort(module: str = "onnxruntime") -> Any:
    from ..._lazy import lazy_import

    return lazy_import(module, package="onnxruntime", purpose="Q/DQ INT8 quantization for TensorRT")


def import_quantization() -> Any:
    """``onnxruntime.quantization``, new enough to take a calibration cache (``calibrate`` needs it)."""
    import inspect

    from ..._lazy import installed_version

    quantization = import_ort("onnxruntime.quantization")
    if "calibration_cache_path" not in inspect.signature(quantization.quantize_static).parameters:
        raise MissingBackendError("onnxruntime", purpose="Q/DQ INT8 quantization for TensorRT (a calibration cache)",
                                  found=installed_version("onnxruntime") or "?", required=ORT_TESTED)
    return quantization


def import_onnx() -> Any:
    from ..._lazy import lazy_import

    return lazy_import("onnx", purpose="Q/DQ INT8 quantization for TensorRT")


@dataclass
class QDQSettings:
    """ONNX Runtime Q/DQ settings (from the target profile's ``quantization`` block)."""

    calibration: str = "auto"
    """Activation ranges: ``minmax``, ``entropy`` (KL), ``percentile`` (of |x|), or ``auto``: the one of them
    that keeps the outputs closest to float on held-out calibration images (:mod:`.calibration_search`)."""
    percentile: float = 99.999
    """The percentile of |x| kept by ``percentile`` calibration."""
    keep_float: tuple[str, ...] = ("first-conv", "classifier")
    """Layers left in float: ``first-conv`` (the Conv(s) on the graph input), ``classifier`` (the last
    Gemm/MatMul, else the last Conv), or ONNX node names."""
    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
    """Weighted op types to quantize."""
    op_types_known: ClassVar[tuple[str, ...]] = WEIGHTED_OPS

    def __post_init__(self) -> None:
        if self.calibration not in (*CALIBRATIONS, AUTO):
            known = [*CALIBRATIONS, AUTO]
            raise ConfigError(f"quantization calibration must be one of {', '.join(known)}, not "
                              f"{self.calibration!r}.{did_you_mean(str(self.calibration), known)}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0 < self.percentile <= 100:
            raise ConfigError(f"quantization percentile must be a number in (0, 100], not {self.percentile!r}")
        self.percentile = float(self.percentile)
        for key in ("keep_float", "op_types"):
            value = getattr(self, key)
            value = (value,) if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"quantization {key} must be a list of names, not {value!r}")
            setattr(self, key, tuple(value))
        unknown = [t for t in self.op_types if t not in self.op_types_known]
        if unknown or not self.op_types:
            raise ConfigError(f"quantization op_types {unknown or '[]'} unsupported: it takes a non-empty subset of "
                              f"{', '.join(self.op_types_known)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> QDQSettings:
        """Settings from a profile's ``quantization`` block; an unknown key is a :class:`ConfigError`."""
        from ...config import settings_from_dict

        return settings_from_dict(cls, data, source, "quantization setting")


# -- quantization -------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ONNX Runtime's C++ warnings off, its Python log records below ERROR dropped, its prints on stderr."""
    from ..._console import stdout_to_stderr

    ort = import_ort()

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname

    root = logging.getLogger()
    root.addFilter(drop)
    for handler in root.handlers:
        handler.addFilter(drop)
    ort.set_default_logger_severity(3)
    try:
        with stdout_to_stderr("onnxruntime"):
            yield
    finally:
        ort.set_default_logger_severity(2)
        root.removeFilter(drop)
        for handler in root.handlers:
            handler.removeFilter(drop)


def session(model: Any, optimize: bool = True, disabled_optimizers: tuple[str, ...] = ()) -> Any:
    """An ONNX Runtime CPU session of an in-memory model (warnings off)."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def _reader(quantization: Any, input_name: str, calib: list[tuple[Path, int]], spec: Any) -> Any:
    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(CalibrationImages(calib, spec))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def calibrate(path: str, input_name: str, op_types: list[str], tensors: set[str], calib: list[tuple[Path, int]],
              spec: Any, settings: QDQSettings, cache: str) -> Any:
    """Activation ranges of ``tensors`` with ONNX Runtime's calibrator, written to ``cache`` for
    ``quantize_static``. Done here rather than inside ``quantize_static`` for three reasons: histograms of
    only the tensors that get a Q (the entropy search costs ~0.1 s per tensor), images fed in chunks so a
    histogram calibration's memory stays flat, and entropy's histogram sizes (``quantize_static`` cannot set
    them, and its 128 bins / 128 quantized bins leave the KL search one candidate: the min-max range)."""
    quantization = import_quantization()
    options: dict[str, Any] = {"symmetric": True}
    if settings.calibration == "entropy":
        options.update(num_bins=ENTROPY_BINS[0], num_quantized_bins=ENTROPY_BINS[1])
    elif settings.calibration == "percentile":
        options.update(num_bins=2048, percentile=settings.percentile)
    method = getattr(quantization.CalibrationMethod, CALIBRATIONS[settings.calibration])
    calibrator = quantization.create_calibrator(
        Path(path), op_types, augmented_model_path=str(Path(cache).with_suffix(".augmented.onnx")),
        calibrate_method=method, extra_options=options)
    if getattr(calibrator, "tensors_to_calibrate", None) is not None:  # histogram calibrators
        calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) & tensors
    for start in range(0, len(calib), CALIB_CHUNK):
        calibrator.collect_data(_reader(quantization, input_name, calib[start:start + CALIB_CHUNK], spec))
    ranges = calibrator.compute_data()
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, Path(cache))
    return method


def quantize_qdq(model: Any, calib: list[tuple[Path, int]], spec: Any, settings: QDQSettings | None = None, *,
                 ranges: str | None = None, record: list[str] | None = None) -> Any:
    """A Q/DQ INT8 copy of the float ONNX ``model`` that passes :func:`check_qdq_rules`. ``ranges``: activation
    ranges (a calibration cache's text, as ``record`` received it from an earlier call on the same graph)
    used instead of calibrating; ``record``: a list the ranges used are appended to."""
    onnx = import_onnx()
    quantization = import_quantization()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings or QDQSettings(calibration="minmax")
    if not calib and ranges is None:
        raise ConfigError("Q/DQ quantization needs at least one calibration image")
    if settings.calibration == AUTO:
        raise ConfigError("quantize_qdq takes one calibration method (OrtQDQ.quantize chooses one for auto)")
    model = copy.deepcopy(model)
    name_nodes(model)
    keep, unknown = keep_float_nodes(model, settings.keep_float)
    if unknown:
        weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]
        raise ConfigError(f"quantization keep_float {unknown} name no node of the model."
                          f"{did_you_mean(unknown[0], weighted)} Use first-conv, classifier or node names such as "
                          f"{', '.join(weighted[:4])}")
    with tempfile.TemporaryDirectory(prefix="edgetl-qdq-") as tmp, quiet_ort():
        src, pre, out, cache = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "qdq.onnx", "ranges.json"))
        onnx.save(model, src)
        quant_pre_process(src, pre)
        prepared = onnx.load(pre)
        nodes = prepared.graph.node
        layers = [n.name for n in nodes if n.op_type in settings.op_types and n.name not in keep]
        if not layers:
            raise ConfigError(f"nothing to quantize: every {'/'.join(settings.op_types)} layer is in keep_float")
        # residual Adds after an INT8 Conv are quantized too, only so that their identity input gets a
        # calibrated Q/DQ (shared with the next layer's): arrange() below drops the rest
        adds = [add.name for add, _, _, conv in residual_adds(prepared) if conv in set(layers)]
        quantized = set(layers) | set(adds)
        op_types = list(settings.op_types) + (["Add"] if adds else [])
        tensors = {t for n in nodes if n.name in quantized for t in (n.input if n.op_type == "Add" else n.input[:1])}
        method = _ranges(pre, GraphIndex(prepared).inputs[0], op_types, tensors, calib, spec, settings, cache,
                         ranges, record)
        quantization.quantize_static(
            pre, out, None, quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=op_types,
            per_channel=True, activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
            nodes_to_quantize=layers + adds, nodes_to_exclude=keep, calibrate_method=method,
            calibration_cache_path=cache, extra_options={
                "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                "AddQDQPairToWeight": True, "DedicatedQDQPair": False, "ForceQuantizeNoInputCheck": True,
                "OpTypesToExcludeOutputQuantization": sorted({n.op_type for n in nodes} | set(op_types)),
                "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
                "QDQDisableWeightAdjustForInt32Bias": True})
        result = onnx.load(out)
    arrange(result, set(layers))
    _restore_header(result, model)
    problems = check_qdq_rules(result, keep)
    if problems:
        raise ModelError(f"the Q/DQ model breaks {len(problems)} TensorRT placement rule(s): {'; '.join(problems[:5])}")
    return result


def _ranges(path: str, input_name: str, op_types: list[str], tensors: set[str], calib: list[tuple[Path, int]],
            spec: Any, settings: QDQSettings, cache: str, ranges: str | None, record: list[str] | None) -> Any:
    """The calibration cache ``quantize_static`` reads: calibrated (:func:`calibrate`), or ``ranges`` as given."""
    if ranges is None:
        method = calibrate(path, input_name, op_types, tensors, calib, spec, settings, cache)
    else:
        Path(cache).write_text(ranges)
        method = getattr(import_quantization().CalibrationMethod, CALIBRATIONS[settings.calibration])
    if record is not None:
        record.append(Path(cache).read_text())
    return method


def _restore_header(result: Any, original: Any) -> None:
    """The source model's opset imports (quant_pre_process adds every ORT domain; a default opset ONNX
    Runtime raised for per-channel Q/DQ stays raised), IR version and metadata."""
    raised = {o.domain: o.version for o in result.opset_import}
    used = {n.domain for n in result.graph.node} | set(STANDARD_DOMAINS)
    opsets = [copy.deepcopy(o) for o in original.opset_import if o.domain in used]
    changed = False
    for opset in opsets:
        changed |= raised.get(opset.domain, 0) > opset.version
        opset.version = max(opset.version, raised.get(opset.domain, 0))
    del result.opset_import[:]
    result.opset_import.extend(opsets)
    if not changed:
        result.ir_version = original.ir_version
    del result.metadata_props[:]
    result.metadata_props.extend(original.metadata_props)


# -- per-layer error, reverting layers ----------------------------------------------------

def layer_sqnr(model: Any, images: np.ndarray) -> dict[str, float]:
    """Per quantized layer, the SQNR (dB) of its INT8 output against the same layer in float fed the same
    input: the error entering at that layer alone, not the error accumulated before it.

    One ONNX Runtime run of ``model`` with a float twin of every quantized layer added (reading the float
    tensors behind its DQs); Q/DQ are simulated exactly (graph optimizations off), so it is deterministic."""
    onnx = import_onnx()
    probe = copy.deepcopy(model)
    index = GraphIndex(probe)
    nodes = {n.name: n for n in probe.graph.node}
    layers = quantized_layers(probe)
    pairs = []
    for name in layers:
        node = nodes[name]
        twin = copy.deepcopy(node)
        twin.name = f"{name}__edgetl_float"
        del twin.input[:], twin.output[:]
        twin.input.extend(index.raw(t) if t else t for t in node.input)
        twin.output.append(f"{node.output[0]}__edgetl_float")
        probe.graph.node.append(twin)
        pairs.append((name, node.output[0], twin.output[0]))
    listed = {o.name for o in probe.graph.output}
    for _, out, ref in pairs:
        for tensor in (out, ref):
            if tensor not in listed:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
                listed.add(tensor)
    sess = session(probe, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: np.asarray(images, dtype=np.float32)})))
    result = {}
    for name, out, ref in pairs:
        q, f = values[out].astype(np.float64), values[ref].astype(np.float64)
        noise, power = float(np.sum((q - f) ** 2)), float(np.sum(f * f))
        result[name] = 10 * math.log10(max(power, 1e-30) / max(noise, 1e-30))
    return result


def revert_layers(model: Any, names: list[str]) -> Any:
    """A copy of the Q/DQ ``model`` with layers ``names`` back in float: their DQ bypassed (data and weight),
    a residual Add after one of them reading its identity input in float again (rule 4 no longer asks for
    the DQ), Q/DQ left unused dropped. Every other node is untouched."""
    layers = quantized_layers(model)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ConfigError(f"cannot return {unknown} to float: not quantized layers of the model."
                          f"{did_you_mean(str(unknown[0]), layers)} Quantized layers: {', '.join(layers[:5])}, ...")
    result = copy.deepcopy(model)
    arrange(result, set(layers) - set(names))
    return result


# -- FP16 ---------------------------------------------------------------------------------

def to_fp16(model: Any) -> Any:
    """An FP16 copy for strongly typed TensorRT: every float tensor FP16 except the graph inputs and
    outputs (float32, Casts at the edges). On a Q/DQ model the Q/DQ stay as they are, with FP16 weights and
    scales (what Model-Optimizer emits); FP16 scales need opset 19, so a lower default opset is raised.
    Run an FP16 Q/DQ model on ONNX Runtime CPU with ``disabled_optimizers=ORT_CPU_DISABLED_OPTIMIZERS``."""
    import_onnx()
    float16 = import_ort("onnxruntime.transformers.float16")
    result = copy.deepcopy(model)
    if any(n.op_type in QDQ_OPS for n in result.graph.node):
        for opset in result.opset_import:
            if opset.domain in STANDARD_DOMAINS and opset.version < 19:
                opset.version = 19
                result.ir_version = max(result.ir_version, 9)  # opset 19 needs IR 9
    with quiet_ort():
        result = float16.convert_float_to_float16(result, keep_io_types=True)
    toposort(result)  # the converter appends its edge Casts at the end
    return result


class OrtQDQ(QuantizerBackend):
    """ONNX Runtime ``quantize_static`` to TensorRT-placed Q/DQ, on an in-memory ``onnx.ModelProto``."""

    name = "ort-qdq"
    qat_engine = "edgetl.compress.quantize.qat_qdq:QDQTraining"

    def check(self) -> None:
        import_onnx()
        import_quantization()

    def settings(self, block: dict[str, Any], source: str = "") -> QDQSettings:
        return QDQSettings.from_dict(block, source)

    def __init__(self) -> None:
        self.search: Any = None
        """The last ``auto`` calibration's :class:`~.calibration_search.SearchReport`."""

    def calibration_method(self, settings: Any) -> str:
        if settings.calibration == AUTO and self.search is not None:
            return f"auto: {self.search.chosen}"
        return f"percentile {settings.percentile:g}" if settings.calibration == "percentile" else settings.calibration

    def calibration_report(self) -> dict[str, Any] | None:
        return self.search.to_dict() if self.search is not None else None

    def quantize(self, model: Any, calib: list[tuple[Path, int]], spec: Any, settings: Any) -> Any:
        if settings.calibration == AUTO:
            from .calibration_search import search

            model, self.search = search(model, calib, spec, settings, quantize_qdq, session)
            return model
        return quantize_qdq(model, calib, spec, settings)

    def rank_layers(self, float_model: Any, model: Any, images: Any) -> list[str]:
        """Quantized layers, lowest local SQNR (:func:`layer_sqnr`) first; ties in graph order. The float
        reference is each layer's float twin inside ``model``, so ``float_model`` is not needed."""
        sqnr = layer_sqnr(model, images)
        order = {name: k for k, name in enumerate(sqnr)}
        return sorted(sqnr, key=lambda name: (round(sqnr[name], 6), order[name]))

    def revert_layers(self, model: Any, names: list[str]) -> Any:
        return revert_layers(model, names)
