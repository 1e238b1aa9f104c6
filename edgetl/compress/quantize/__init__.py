"""INT8 quantization: a backend-agnostic algorithm (:mod:`.algorithm`) over quantizer backends
(:mod:`.backend`: one table; :mod:`.nncf_openvino` today), with lazily decoded calibration data."""

from __future__ import annotations

from .algorithm import Evaluator, QuantizeOutcome, quantize_within_budget
from .backend import BACKENDS, QuantizerBackend, get_backend
from .calibration import CalibrationImages, LabelledImages, calibration_samples

_NNCF = ("COMPUTE_LAYERS", "QuantizeSettings", "float_compute_layers", "import_nncf", "quantize_accuracy_control",
         "quantize_ptq", "sensitivity_report")


def __getattr__(name: str):  # NNCF/OpenVINO names, imported only when used
    if name in _NNCF:
        from . import nncf_openvino

        return getattr(nncf_openvino, name)
    raise AttributeError(f"module 'edgetl.compress.quantize' has no attribute {name!r}")


__all__ = ["BACKENDS", "CalibrationImages", "Evaluator", "LabelledImages", "QuantizeOutcome", "QuantizerBackend",
           "calibration_samples", "get_backend", "quantize_within_budget", *_NNCF]
