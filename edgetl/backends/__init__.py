"""Runtime backends: one module per runtime, each exposing a :class:`~edgetl.backends.base.Runner`.

Modules are imported only when their runtime is used, so ``import edgetl`` and the CLI start
without OpenVINO or TensorRT installed.
"""

from __future__ import annotations

import importlib

from ..errors import EdgetlError, did_you_mean
from .base import Runner, RunnerInfo

# runtime name -> "module:RunnerClass"
RUNNERS = {
    "torch": "edgetl.backends.torch_eager:TorchRunner",
    "onnxruntime": "edgetl.backends.onnxruntime:OnnxRuntimeRunner",
    "openvino": "edgetl.backends.openvino:OpenVINORunner",
    "tensorrt": "edgetl.backends.tensorrt:TensorRTRunner",
}


def runner_class(runtime: str) -> type[Runner]:
    """The runner class for ``runtime`` (imports its module, not the runtime library itself)."""
    if runtime not in RUNNERS:
        raise EdgetlError(f"unknown runtime {runtime!r}.{did_you_mean(runtime, list(RUNNERS))}")
    module_name, _, class_name = RUNNERS[runtime].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_runner(runtime: str, artifact, **options) -> Runner:
    return runner_class(runtime)(artifact, **options)


__all__ = ["RUNNERS", "Runner", "RunnerInfo", "create_runner", "runner_class"]
