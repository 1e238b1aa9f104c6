"""NNCF post-training quantization of OpenVINO models: the quantizer backend of the OpenVINO toolchain,
plus a per-layer sensitivity report (where INT8 error enters)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..._console import stdout_to_stderr
from ...backends.openvino import COMPUTE_LAYERS, import_openvino  # noqa: F401  (COMPUTE_LAYERS: re-exported)
from ...errors import ConfigError
from .backend import QuantizerBackend
from .calibration import CalibrationImages, LabelledImages

log = logging.getLogger(__name__)
INPUT_SQNR_DB = 6.02 * 8 + 1.76  # SQNR of a full-scale signal quantized to 8 bits
QUANTIZED_OP_TYPES = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def import_nncf():
    """``nncf``, or :class:`MissingBackendError` with the install hint."""
    from ..._lazy import lazy_import

    return lazy_import("nncf", extra="openvino", purpose="INT8 quantization", min_version="2.14")


# -- quantization -------------------------------------------------------------------------

@dataclass
class QuantizeSettings:
    """NNCF settings (from the target profile's ``quantization`` block)."""

    preset: str = "performance"
    """``performance``: symmetric weights and activations; ``mixed``: asymmetric activations."""
    fast_bias_correction: bool = True
    """NNCF's fast bias correction (the slower exact one rarely helps CNNs)."""
    presets: ClassVar[tuple[str, ...]] = ("performance", "mixed")

    def __post_init__(self) -> None:
        if self.preset not in self.presets:
            raise ConfigError(f"quantization preset must be one of {', '.join(self.presets)}, not {self.preset!r}")
        if not isinstance(self.fast_bias_correction, bool):
            raise ConfigError(f"quantization fast_bias_correction must be true or false, "
                              f"not {self.fast_bias_correction!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> QuantizeSettings:
        """Settings from a profile's ``quantization`` block; an unknown key is a :class:`ConfigError`."""
        from ...config import settings_from_dict

        return settings_from_dict(cls, data, source, "quantization setting")


def _common_args(nncf: Any, settings: QuantizeSettings, subset_size: int) -> dict[str, Any]:
    return {"preset": nncf.QuantizationPreset(settings.preset), "subset_size": subset_size,
            "fast_bias_correction": settings.fast_bias_correction}


def quantize_ptq(model: Any, samples: list[tuple[Path, int]], spec: Any,
                 settings: QuantizeSettings | None = None) -> Any:
    """Plain post-training INT8 quantization of an ``openvino.Model`` (returns a new model)."""
    nncf = import_nncf()
    settings = settings or QuantizeSettings()
    dataset = nncf.Dataset(CalibrationImages(samples, spec))
    with stdout_to_stderr():  # NNCF's progress bars and INFO:nncf lines go to stdout
        return nncf.quantize(model, dataset, **_common_args(nncf, settings, len(samples)))


def quantize_accuracy_control(model: Any, samples: list[tuple[Path, int]], spec: Any, val_images: Any,
                              val_labels: np.ndarray, max_drop: float, settings: QuantizeSettings | None = None,
                              max_iterations: int | None = None) -> Any:
    """NNCF accuracy-controlled INT8: reverts the most harmful layers to float until top-1 drops <= ``max_drop``.

    ``max_drop`` is a fraction (0.01 = one point) measured against the OpenVINO float model on
    ``val_images`` (an NCHW array, or :class:`~edgetl.data.EvalImages` decoded on demand). NNCF returns its
    best model even when it cannot reach the budget.
    """
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    settings = settings or QuantizeSettings()
    calibration = nncf.Dataset(CalibrationImages(samples, spec))
    validation = nncf.Dataset(LabelledImages(val_images, val_labels), lambda item: item[0][None])

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        correct = []
        output = compiled.output(0)
        for image, label in items:
            logits = compiled(image[None])[output]
            correct.append(float(int(np.argmax(logits[0])) == int(label)))
        return (float(np.mean(correct)) if correct else 0.0), correct

    restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=min(len(val_labels), 300))
    if max_iterations is not None:
        restorer.max_num_iterations = max_iterations
    with stdout_to_stderr():
        return nncf.quantize_with_accuracy_control(
            model, calibration, validation, validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=restorer, **_common_args(nncf, settings, len(samples)))


# -- sensitivity --------------------------------------------------------------------------

def _compute_ops(model: Any) -> dict[str, Any]:
    return {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() in QUANTIZED_OP_TYPES}


def _upstream(ops: dict[str, Any], model: Any) -> dict[str, list[str]]:
    """For each compute op, the nearest compute ops feeding its data input (through any other ops)."""
    memo: dict[str, list[str]] = {}

    def feeders(node: Any, depth: int = 0) -> list[str]:
        name = node.get_friendly_name()
        if name in memo:
            return memo[name]
        found: list[str] = []
        if depth < 200:
            for inp in node.inputs()[:1] if node.get_type_name() in QUANTIZED_OP_TYPES else node.inputs():
                src = inp.get_source_output().get_node()
                if src.get_type_name() in ("Constant", "Parameter"):
                    continue
                found += [src.get_friendly_name()] if src.get_friendly_name() in ops else feeders(src, depth + 1)
        memo[name] = sorted(set(found))
        return memo[name]

    result = {}
    for name, op in ops.items():
        result[name] = feeders(op)
        memo[name] = [name]  # downstream ops stop at this layer
    return result


def _layer_outputs(model: Any, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the named compute ops on ``images`` (true FP32 execution, static shape)."""
    ov = import_openvino()
    clone = model.clone()
    ops = _compute_ops(clone)
    first_added = len(clone.outputs)
    clone.add_outputs([ops[n].output(0) for n in names])
    clone.reshape({clone.inputs[0]: list(images.shape)})
    compiled = ov.Core().compile_model(clone, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(images)
    return {name: result[compiled.outputs[first_added + i]] for i, name in enumerate(names)}


def sensitivity_report(float_model: Any, int8_model: Any, images: np.ndarray,
                       layer_precisions: dict[str, str] | None = None, top: int | None = None) -> dict[str, Any]:
    """Where INT8 error enters: per compute layer, the output error of the INT8 model vs FP32.

    Both models run with ``INFERENCE_PRECISION_HINT=f32`` on the same few images, so the only
    difference is quantization. ``nmse`` is the error accumulated up to a layer; ``added_db`` is
    how much SQNR the layer itself loses relative to the layers feeding it, the figure to sort by.
    ``layer_precisions`` (runtime layer -> precision) marks layers the plugin kept in float.
    """
    float_ops, int8_ops = _compute_ops(float_model), _compute_ops(int8_model)
    names = [n for n in float_ops if n in int8_ops]
    ref = _layer_outputs(float_model, names, images)
    out = _layer_outputs(int8_model, names, images)
    upstream = _upstream(float_ops, float_model)
    sqnr: dict[str, float] = {}
    rows = []
    for name in names:
        f, q = ref[name].astype(np.float64), out[name].astype(np.float64)
        power = float(np.sum(f * f)) or 1e-30
        nmse = float(np.sum((q - f) ** 2)) / power
        sqnr[name] = -10 * math.log10(max(nmse, 1e-30))
        cosine = float(np.sum(f * q) / (math.sqrt(power) * math.sqrt(float(np.sum(q * q)) or 1e-30)))
        rows.append({"layer": name, "type": float_ops[name].get_type_name(), "nmse": nmse, "sqnr_db": sqnr[name],
                     "cosine": cosine})
    for row in rows:
        inputs = [sqnr[n] for n in upstream.get(row["layer"], []) if n in sqnr]
        # SQNR lost at this layer: the worst feeding layer's SQNR (for a first layer, that of an ideal
        # 8-bit input, ~49.9 dB) minus this layer's output SQNR
        row["added_db"] = (min(inputs) if inputs else INPUT_SQNR_DB) - row["sqnr_db"]
        if layer_precisions is not None:
            row["runs_in"] = _runtime_precision_of(row["layer"], layer_precisions)
    ranked = sorted(rows, key=lambda r: r["added_db"], reverse=True)
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    logits_f, logits_q = ref.get(names[-1]) if names else None, out.get(names[-1]) if names else None
    report = {
        "method": "per-layer output error, INT8 vs FP32 (both INFERENCE_PRECISION_HINT=f32)",
        "images": int(len(images)),
        "layers": ranked[:top] if top else ranked,
        "worst_layers": [r["layer"] for r in ranked[:5]],
        "final_layer_sqnr_db": sqnr[names[-1]] if names else None,
        "final_layer_top1_agreement": (float(np.mean(logits_f.reshape(len(images), -1).argmax(1)
                                                     == logits_q.reshape(len(images), -1).argmax(1)))
                                       if names else None),
    }
    return report


def _runtime_precision_of(layer: str, layer_precisions: dict[str, str]) -> str | None:
    """The runtime precision of original op ``layer`` (``layer_precisions`` keyed by original op names)."""
    return layer_precisions.get(layer)


def float_compute_layers(layer_precisions: dict[str, str]) -> list[str]:
    """Compute layers the plugin runs in a float precision (i.e. not INT8)."""
    return sorted(name for name, precision in layer_precisions.items() if precision != "int8")


class NNCFOpenVINO(QuantizerBackend):
    """NNCF on an in-memory ``openvino.Model``: PTQ, accuracy-controlled PTQ, sensitivity report."""

    name = "nncf-openvino"
    qat_engine = "edgetl.compress.quantize.qat_nncf:NNCFTraining"

    def check(self) -> None:
        import_nncf()

    def settings(self, block: dict[str, Any], source: str = "") -> QuantizeSettings:
        return QuantizeSettings.from_dict(block, source)

    def calibration_method(self, settings: Any) -> str:
        return f"nncf min-max ({settings.preset} preset)"

    def quantize(self, model: Any, calib: list[tuple[Path, int]], spec: Any, settings: Any) -> Any:
        return quantize_ptq(model, calib, spec, settings)

    def accuracy_control(self, model: Any, calib: list[tuple[Path, int]], spec: Any, images: Any, labels: Any,
                         max_drop: float, settings: Any, max_iterations: int | None) -> Any:
        return quantize_accuracy_control(model, calib, spec, images, labels, max_drop, settings, max_iterations)
