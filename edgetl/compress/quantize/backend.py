"""The quantizer backend protocol, and the one table of backends (NNCF's algorithm/backend split).

A backend knows one framework's model type (an ``openvino.Model`` for NNCF; an ONNX file for ONNX
Runtime's Q/DQ quantizer next); :mod:`.algorithm` holds what does not depend on it (PTQ, check the
accuracy budget, fall back).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from ..._lazy import load_attr
from ...errors import ConfigError, did_you_mean

BACKENDS = {"nncf-openvino": "edgetl.compress.quantize.nncf_openvino:NNCFOpenVINO",
            "ort-qdq": "edgetl.compress.quantize.ort_qdq:OrtQDQ"}
"""name -> 'module:Class'; nothing is imported until a backend is asked for."""


class QuantizerBackend(abc.ABC):
    name = ""
    qat_engine: ClassVar[str | None] = None
    """``module:Class`` of its quantization-aware training engine (:class:`.qat.QATEngine`), if it has one."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise MissingBackendError (with the install hint) before any work if the backend is missing."""

    @abc.abstractmethod
    def settings(self, block: dict[str, Any], source: str = "") -> Any:
        """Typed settings from a target profile's ``quantization`` block; unknown keys are errors."""

    @abc.abstractmethod
    def quantize(self, model: Any, calib: list[tuple[Path, int]], spec: Any, settings: Any) -> Any:
        """Plain post-training INT8 quantization; returns a new model."""

    def calibration_method(self, settings: Any) -> str:
        """How ``settings`` choose activation ranges, as recorded in build.json and the bench row."""
        return "default"

    def calibration_report(self) -> dict[str, Any] | None:
        """What the last :meth:`quantize` tried to choose its ranges (None: nothing was chosen)."""
        return None

    def accuracy_control(self, model: Any, calib: list[tuple[Path, int]], spec: Any, images: Any, labels: Any,
                         max_drop: float, settings: Any, max_iterations: int | None) -> Any:
        """INT8 with layers returned to float until the top-1 drop (a fraction, against this backend's own
        float model) is within ``max_drop``; None when the backend has no such mode."""
        return None

    def rank_layers(self, float_model: Any, model: Any, images: Any) -> list[str] | None:
        """Quantized layers of ``model``, the most harmful to accuracy first (for the generic per-layer
        fallback of :mod:`.algorithm`); None when the backend cannot rank them."""
        return None

    def revert_layers(self, model: Any, names: list[str]) -> Any:
        """A copy of the quantized ``model`` with layers ``names`` back in float (the rest untouched)."""
        raise NotImplementedError(f"{self.name} cannot return single layers to float")


    def qat(self) -> Any:
        """A new QAT engine for this backend's INT8 models."""
        if self.qat_engine is None:
            raise ConfigError(f"quantizer {self.name} has no quantization-aware training: build without --qat")
        return load_attr(self.qat_engine)()


def get_backend(name: str) -> QuantizerBackend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown quantizer backend {name!r}.{did_you_mean(name, list(BACKENDS))}")
    return load_attr(BACKENDS[name])()
