"""Quantization-aware training for the OpenVINO path: NNCF's quantizers on the PyTorch model.

``nncf.quantize`` on the torch module (the same preset and calibration images as PTQ of the OpenVINO
model) gives a model with FakeQuantize ops whose ranges are initialised from calibration and then trained
with the weights; ``openvino.convert_model`` turns the trained one into an IR that runs in INT8.

NNCF's CPU fake-quant kernels are a C++ extension compiled on first use (a minute or more): when it cannot
be built in :data:`EXTENSION_TIMEOUT_S` seconds, or at all, training runs on NNCF's torch-native kernels
(said in one line; slower per step, the same model).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..._console import stdout_to_stderr
from .calibration import CalibrationImages
from .nncf_openvino import import_nncf
from .qat import QATEngine

log = logging.getLogger(__name__)
EXTENSION_TIMEOUT_S = 240
"""How long NNCF may compile its CPU extension before QAT uses its torch-native kernels."""
REFERENCE_ENV = "EDGETL_NNCF_REFERENCE_KERNELS"
"""Set to 1 to skip NNCF's C++ extension (tests, machines without a compiler)."""


def use_kernels() -> str:
    """Load NNCF's CPU fake-quant extension, or fall back to its torch-native kernels; returns which."""
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    namespace = extensions.QuantizedFunctionsCPU
    if namespace._loaded_namespace is not None:
        return "reference" if namespace._loaded_namespace is ReferenceQuantizedFunctions else "extension"
    reason = "skipped (EDGETL_NNCF_REFERENCE_KERNELS=1)" if os.environ.get(REFERENCE_ENV) == "1" else None
    if reason is None:
        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", str(EXTENSION_TIMEOUT_S))
        try:
            with stdout_to_stderr("nncf"):
                namespace.get("Quantize_forward")
        except Exception as exc:  # noqa: BLE001  (a compiler missing, a timeout, a build error)
            reason = f"could not be built ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if namespace._loaded_namespace is ReferenceQuantizedFunctions and reason is None:
        reason = "could not be built (see NNCF's warning above)"
    if reason is None:
        return "extension"
    namespace._loaded_namespace = ReferenceQuantizedFunctions
    log.warning("NNCF's C++ fake-quant extension %s: QAT runs on its torch-native kernels (the same model, "
                "slower per training step)", reason)
    return "reference"


class NNCFTraining(QATEngine):
    name = "nncf-torch"

    def prepare(self, model: Any, float_model: Any, calib: list[tuple[Path, int]], spec: Any, settings: Any,
                backend: Any) -> Any:
        import torch

        nncf = import_nncf()
        self.kernels = use_kernels()
        self.spec = spec
        dataset = nncf.Dataset(CalibrationImages(calib, spec), lambda batch: torch.from_numpy(batch))
        model.eval()
        with stdout_to_stderr("nncf"):
            quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset(settings.preset),
                                      subset_size=len(calib), fast_bias_correction=settings.fast_bias_correction)
        log.info("QAT: NNCF quantizers on the PyTorch model (%s preset, %d calibration images, %s kernels)",
                 settings.preset, len(calib), self.kernels)
        return quantized

    def export(self, model: Any) -> Any:
        import torch

        from ...backends.openvino import import_openvino

        ov = import_openvino()
        model.eval()
        size = self.spec.input_size
        with torch.no_grad(), stdout_to_stderr("openvino"):
            converted = ov.convert_model(model, example_input=torch.zeros(1, 3, size, size),
                                         input=[ov.PartialShape([-1, 3, size, size])])
        converted.inputs[0].get_tensor().set_names({"input"})  # as the float ONNX model's input
        converted.outputs[0].get_tensor().set_names({"logits"})
        return converted

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "kernels": self.kernels}
