"""Quantization-aware training engines, one per quantizer backend (the one table of them).

An engine turns the float PyTorch model into a trainable fake-quantized one that behaves as the backend's
INT8 model will (:meth:`QATEngine.prepare`), and the trained one into the backend's INT8 model
(:meth:`QATEngine.export`). The training itself is the project's one trainer (:mod:`edgetl.qat`).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from ...errors import ConfigError, did_you_mean

QAT_ENGINES = {"ort-qdq": "edgetl.compress.quantize.qat_qdq:QDQTraining",
               "nncf-openvino": "edgetl.compress.quantize.qat_nncf:NNCFTraining"}
"""quantizer backend name -> 'module:Class' of its QAT engine; nothing is imported until asked for."""


class QATEngine(abc.ABC):
    name = ""

    @abc.abstractmethod
    def prepare(self, model: Any, float_model: Any, calib: list[tuple[Path, int]], spec: Any, settings: Any,
                backend: Any) -> Any:
        """The trainable fake-quantized version of the float PyTorch ``model`` (may change it in place).
        ``float_model``: the toolchain's float model of the same network (ONNX, ``openvino.Model``)."""

    @abc.abstractmethod
    def export(self, model: Any) -> Any:
        """The backend's INT8 model of the trained ``model`` (what the toolchain saves)."""

    def describe(self) -> dict[str, Any]:
        """What :meth:`prepare` did, for build.json."""
        return {}


def get_qat_engine(quantizer: str) -> QATEngine:
    import importlib

    if quantizer not in QAT_ENGINES:
        raise ConfigError(f"no quantization-aware training for quantizer {quantizer!r}."
                          f"{did_you_mean(quantizer, list(QAT_ENGINES))}")
    module, _, cls = QAT_ENGINES[quantizer].partition(":")
    return getattr(importlib.import_module(module), cls)()
