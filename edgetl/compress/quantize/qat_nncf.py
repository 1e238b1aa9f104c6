"""Quantization-aware training for the OpenVINO path: NNCF's quantizers on the PyTorch model.

``nncf.quantize`` on the torch module (the same preset and calibration images as PTQ of the OpenVINO
model) gives a model with FakeQuantize ops whose ranges are initialised from calibration and then trained
with the weights; ``openvino.convert_model`` turns the trained one into an IR that runs in INT8.

NNCF's CPU fake-quant kernels come two ways: torch-native ops (the default here: measured as fast as the
C++ extension on a 2-core x86 CPU, 1.9 vs 2.1 s per 16-image EfficientNet-Lite0 step at 224 px, and nothing
to compile) or a C++ extension compiled on first use (``EDGETL_NNCF_KERNELS=extension``: a minute or more, a
compiler needed; when it cannot be built in :data:`EXTENSION_TIMEOUT_S` seconds, or at all, QAT says so in
one line and uses the torch-native kernels).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..._console import stdout_to_stderr
from ...errors import ConfigError
from .calibration import CalibrationImages
from .nncf_openvino import import_nncf
from .qat import QATEngine

log = logging.getLogger(__name__)
EXTENSION_TIMEOUT_S = 240
"""How long NNCF may compile its CPU extension before QAT uses its torch-native kernels."""
KERNELS_ENV = "EDGETL_NNCF_KERNELS"
"""``torch`` (default) or ``extension``: which fake-quant kernels NNCF trains with."""


def use_kernels() -> str:
    """NNCF's torch-native fake-quant kernels, or with ``EDGETL_NNCF_KERNELS=extension`` its C++ extension
    (compiled now; the torch-native ones when that fails); returns which: ``torch`` or ``extension``."""
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    namespace = extensions.QuantizedFunctionsCPU
    wanted = os.environ.get(KERNELS_ENV, "torch")
    if wanted not in ("torch", "extension"):
        raise ConfigError(f"{KERNELS_ENV} must be torch or extension, not {wanted!r}")
    if wanted == "torch" or namespace._loaded_namespace is ReferenceQuantizedFunctions:
        namespace._loaded_namespace = ReferenceQuantizedFunctions
        return "torch"
    if namespace._loaded_namespace is not None:
        return "extension"
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", str(EXTENSION_TIMEOUT_S))
    reason = None
    try:
        with stdout_to_stderr("nncf"):
            namespace.get("Quantize_forward")
    except Exception as exc:  # noqa: BLE001  (a compiler missing, a timeout, a build error)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    if reason is None and namespace._loaded_namespace is not ReferenceQuantizedFunctions:
        return "extension"
    namespace._loaded_namespace = ReferenceQuantizedFunctions
    log.warning("NNCF's C++ fake-quant extension could not be built (%s): QAT uses NNCF's torch-native kernels "
                "(the same model, about as fast on a CPU)", reason or "see NNCF's warning above")
    return "torch"


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
