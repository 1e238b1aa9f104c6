"""TensorRT runner: deserialises a ``.engine`` and runs it on an NVIDIA GPU (TensorRT 10 API).

Uses the name-based tensor API (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); device buffers are torch CUDA tensors, so no pycuda is needed. TensorRT
and torch's CUDA support are imported only in :meth:`load`. An engine only runs on the TensorRT
version and GPU architecture it was built for: when a sidecar (``model.json`` or ``build.json``
beside the engine) records them, they are checked before deserialising, with a readable error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError, TargetError
from .base import Runner, RunnerInfo


def import_tensorrt():
    """``tensorrt`` (>= 10, the name-based tensor API), or :class:`MissingBackendError` with the install hint."""
    from ._registry import RUNTIMES

    return RUNTIMES["tensorrt"].import_library()


def _torch_dtype(trt: Any, dtype: Any):
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT8: torch.int8,
             trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
    for name, torch_type in (("BF16", torch.bfloat16), ("INT64", torch.int64)):  # TensorRT >= 9/10 only
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_type
    if dtype not in table:
        raise ModelError(f"TensorRT I/O tensor type {dtype} is not supported by edgetl's runner")
    return table[dtype]


def _cuda_index(device: int | str) -> int:
    """CUDA device index from ``0``, ``"cuda:1"``, ``"GPU"`` or ``"GPU.1"`` (a profile's device name)."""
    text = str(device).strip().lower()
    for prefix in ("cuda", "gpu"):
        if text.startswith(prefix):
            text = text[len(prefix):].lstrip(":.") or "0"
    if not text.isdigit():
        raise ConfigError(f"tensorrt runner device must be a CUDA device such as 0, cuda:1 or GPU, not {device!r}")
    return int(text)


def read_sidecar(engine: Path) -> dict[str, Any]:
    """Build metadata written beside the engine (``<engine>.json``, ``model.json`` or ``build.json``)."""
    for candidate in (engine.with_suffix(".json"), engine.parent / "build.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return {}
    return {}


class TensorRTRunner(Runner):
    """One engine, one execution context, one CUDA stream (optimization profile 0)."""

    runtime = "tensorrt"
    option_names = ("threads", "device")

    def __init__(self, artifact: str | Path, *, threads: int | None = None, device: int | str = 0,
                 **options: Any) -> None:
        super().__init__(artifact, threads=threads, **options)
        self.device = _cuda_index(device)
        self.engine = self.context = self.stream = None
        self.sidecar: dict[str, Any] = {}

    def _load_impl(self) -> None:
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise TargetError(f"{self.artifact} is a TensorRT engine and needs an NVIDIA GPU; none is visible")
        count = torch.cuda.device_count()
        if self.device >= count:
            raise TargetError(f"CUDA device {self.device} is not available on this machine ({count} visible): "
                              f"choose device 0..{count - 1}")
        self.sidecar = read_sidecar(self.artifact)
        self._check_compatibility(trt, torch)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        torch.cuda.set_device(self.device)
        self.engine = self._trt_runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT {trt.__version__} could not deserialise {self.artifact}: engines only load on "
                             "the TensorRT version and GPU they were built with; rebuild it on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or not self.outputs:
            raise ModelError(f"{self.artifact} has inputs {self.inputs} and outputs {self.outputs}: "
                             "edgetl expects one image input and a logits output")
        self.stream = torch.cuda.Stream(device=self.device)

    def _check_compatibility(self, trt: Any, torch: Any) -> None:
        built_trt = self.sidecar.get("tensorrt_version")
        if built_trt and built_trt.split(".")[:2] != trt.__version__.split(".")[:2]:
            raise TargetError(f"{self.artifact} was built with TensorRT {built_trt}, this machine has {trt.__version__}: "
                              "rebuild the engine here (edgetl export --target ...)")
        built_cc = self.sidecar.get("compute_capability")
        if built_cc:
            here = "%d.%d" % torch.cuda.get_device_capability(self.device)
            if str(built_cc) != here and not self.sidecar.get("hardware_compatibility"):
                raise TargetError(f"{self.artifact} was built for compute capability {built_cc}, this GPU is {here}: "
                                  "rebuild the engine on this device")

    def input_range(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
        """(min, opt, max) input shapes of profile 0 for a dynamic engine, else None."""
        name = self.inputs[0]
        if -1 not in tuple(self.engine.get_tensor_shape(name)):
            return None
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(opt), tuple(high)

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        trt = import_tensorrt()
        name = self.inputs[0]
        bounds = self.input_range()
        if bounds and not all(lo <= n <= hi for lo, n, hi in zip(bounds[0], batch.shape, bounds[2])):
            raise ModelError(f"input shape {batch.shape} is outside the engine's optimization profile "
                             f"{bounds[0]}..{bounds[2]}: rebuild with a wider profile or use another batch size")
        device = torch.device("cuda", self.device)
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(batch).to(device, non_blocking=False)
            x = x.to(_torch_dtype(trt, self.engine.get_tensor_dtype(name))).contiguous()
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise ModelError(f"TensorRT rejected input shape {tuple(x.shape)} for {name}")
            self.context.set_tensor_address(name, x.data_ptr())
            outputs = {}
            for out in self.outputs:
                shape = tuple(self.context.get_tensor_shape(out))
                tensor = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(out)), device=device)
                self.context.set_tensor_address(out, tensor.data_ptr())
                outputs[out] = tensor
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ModelError(f"TensorRT execution failed for {self.artifact}")
        self.stream.synchronize()
        return outputs[self.outputs[0]].float().cpu().numpy()

    def _describe_impl(self) -> RunnerInfo:
        import torch

        from ..doctor import gpu_info

        trt = import_tensorrt()
        gpus = gpu_info()
        gpu = gpus[self.device] if len(gpus) > self.device else {}
        # the builder's precision flags are what the engine may use; TensorRT picks per layer within them
        precision = self.sidecar.get("precision") or "unknown (no build sidecar)"
        return RunnerInfo(runtime="tensorrt", version=trt.__version__, device=f"cuda:{self.device}",
                          precision=str(precision), threads=None,
                          extra={"tensorrt_version": trt.__version__, "gpu": torch.cuda.get_device_name(self.device),
                                 "compute_capability": "%d.%d" % torch.cuda.get_device_capability(self.device),
                                 "driver": gpu.get("driver"), "io_tensors": self.inputs + self.outputs,
                                 "profile": self.input_range(), "sidecar": self.sidecar})

    def close(self) -> None:
        self.context = self.engine = self.stream = None
        super().close()
