"""Quantization-aware training engines: each quantizer backend names its own (``QuantizerBackend.qat_engine``).

An engine turns the float PyTorch model into a trainable fake-quantized one that behaves as the backend's
INT8 model will (:meth:`QATEngine.prepare`), and the trained one into the backend's INT8 model
(:meth:`QATEngine.export`). The training itself is the project's one trainer (:mod:`edgetl.qat`).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any


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
