"""ONNX Runtime runner (CPU): float ONNX and the QDQ INT8 ONNX that TensorRT consumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgetlError
from .base import Runner, RunnerInfo


def import_onnxruntime():
    """``onnxruntime``, or :class:`MissingBackendError` with the install hint."""
    from ._registry import RUNTIMES

    return RUNTIMES["onnxruntime"].import_library()


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    option_names = ("threads", "providers", "disabled_optimizers")

    def __init__(self, artifact: str | Path, *, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), disabled_optimizers: tuple[str, ...] = (),
                 **options: Any) -> None:
        super().__init__(artifact, threads=threads, **options)
        self.providers = list(providers)
        self.disabled_optimizers = list(disabled_optimizers)
        """Graph transformers to skip (an FP16 Q/DQ model needs ``WeightBiasQuantization`` off on the CPU)."""
        self.session = None

    def _load_impl(self) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        try:
            extra = {"disabled_optimizers": self.disabled_optimizers} if self.disabled_optimizers else {}
            self.session = ort.InferenceSession(str(self.artifact), sess_options=opts, providers=self.providers,
                                                **extra)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types for damaged files
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise EdgetlError(f"{self.artifact} could not be loaded by ONNX Runtime ({first[:160]}): the file is "
                              "damaged or not an ONNX model") from None
        self.input_name = self.session.get_inputs()[0].name

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def _describe_impl(self) -> RunnerInfo:
        ort = import_onnxruntime()
        precision = _precision(self.artifact)
        return RunnerInfo(runtime="onnxruntime", version=ort.__version__, device="cpu", precision=precision,
                          threads=self.threads, extra={"providers": self.session.get_providers()})

    def close(self) -> None:
        self.session = None
        super().close()


def _precision(path: Path) -> str:
    """``int8-qdq`` (Q/DQ nodes; ``int8-qdq+fp16`` with FP16 weights), ``fp16`` or ``fp32``, from the graph."""
    try:
        import onnx
    except ImportError:  # the bundle runtime (edgetl.runtime) runs without onnx: the graph cannot be read
        return "unknown"
    model = onnx.load(str(path), load_external_data=False)
    fp16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    if any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        return "int8-qdq+fp16" if fp16 else "int8-qdq"
    return "fp16" if fp16 else "fp32"
