"""TensorRT runner: deserialises a raw ``.engine`` plan and runs it on an NVIDIA GPU (TensorRT 10 / 11 API).

No torch: device facts come from the CUDA driver and buffers from Polygraphy (:mod:`._cuda`). An engine only
runs on the TensorRT version, GPU architecture and platform it was built for, so the runner reads the
fingerprint ``edgetl compile`` writes beside it (``<engine name>.json``, e.g. ``model.engine.json``) and
refuses, before deserialising, an engine whose fingerprint is missing, damaged, written for another engine
(sha256) or for another TensorRT / GPU / platform, each with the command that rebuilds it on this device.
It reports the precision the engine's layers run in (from the fingerprint's layer summary, e.g. ``int8+fp16``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._io import sha256
from .._lazy import version_tuple
from ..errors import ConfigError, ModelError, TargetError
from . import _cuda
from .base import Runner, RunnerInfo

SIDECAR_KEYS = ("engine_sha256", "tensorrt_version", "compute_capability", "platform", "hardware_compatibility",
                "version_compatible", "precision")
"""Keys a fingerprint must have for the runner to trust it (``edgetl compile`` writes more)."""
PLATFORMS = {"jetson": "Jetson (L4T)", "gpu": "discrete-GPU machine"}


def import_tensorrt():
    """``tensorrt`` (>= 10, the name-based tensor API), or :class:`MissingBackendError` with the install hint."""
    from ._registry import RUNTIMES

    return RUNTIMES["tensorrt"].import_library()


def sidecar_path(engine: str | Path) -> Path:
    """The fingerprint of ``engine``: ``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def rebuild_hint(engine: Path) -> str:
    return f"rebuild it on this device with `edgetl compile {engine.parent}`"


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The engine's fingerprint; missing, not JSON or lacking :data:`SIDECAR_KEYS` is a one-line ModelError."""
    engine = Path(engine)
    path = sidecar_path(engine)
    if not path.is_file():
        raise ModelError(f"{engine} has no build fingerprint {path.name} beside it, so edgetl cannot tell which "
                         f"TensorRT and GPU it was built for: {rebuild_hint(engine)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is damaged (not valid JSON: {exc}): {rebuild_hint(engine)}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is damaged (a JSON {type(data).__name__}, not an object): {rebuild_hint(engine)}")
    missing = [key for key in SIDECAR_KEYS if key not in data]
    if missing:
        raise ModelError(f"{path} is damaged (it lacks {', '.join(missing)}): {rebuild_hint(engine)}")
    return data


def check_sidecar(engine: Path, sidecar: dict[str, Any], *, engine_sha256: str, tensorrt_version: str,
                  compute_capability: str, platform: str) -> tuple[str, str]:
    """Refuse (one line) an engine its fingerprint does not describe, or one this machine cannot run; else
    the rules that accepted it: (``"same-minor"`` | ``"version-compatible"``, ``"same-sm"`` | ``"ampere+"``)."""
    hint = rebuild_hint(engine)
    if sidecar["engine_sha256"] != engine_sha256:
        raise ModelError(f"{sidecar_path(engine)} describes another engine (its sha256 is not that of "
                         f"{engine.name}): {hint}")
    built_on = sidecar["platform"]
    if built_on != platform:
        raise TargetError(f"{engine} was built on a {PLATFORMS.get(built_on, built_on)}, this machine is a "
                          f"{PLATFORMS.get(platform, platform)}: {hint}")
    version = _check_version(engine, sidecar, tensorrt_version, hint)
    return version, _check_gpu(engine, sidecar, compute_capability, hint)


def _check_version(engine: Path, sidecar: dict[str, Any], here: str, hint: str) -> str:
    built = str(sidecar["tensorrt_version"])
    b, h = version_tuple(built), version_tuple(here)
    if b[:2] == h[:2]:
        return "same-minor"
    if sidecar["version_compatible"] and b[0] == h[0] and h >= b:
        return "version-compatible"
    why = (" (a version-compatible engine runs only on a newer TensorRT of the same major version)"
           if sidecar["version_compatible"] else "")
    raise TargetError(f"{engine} was built with TensorRT {built}, this machine has {here}{why}: {hint}")


def _check_gpu(engine: Path, sidecar: dict[str, Any], here: str, hint: str) -> str:
    built = str(sidecar["compute_capability"])
    if sidecar["hardware_compatibility"] == "ampere+":
        if version_tuple(here) < (8, 0):
            raise TargetError(f"{engine} is hardware-compatible with Ampere and newer GPUs (sm >= 8.0), this GPU "
                              f"is sm {here}: {hint}")
        return "ampere+"
    if built != here:
        raise TargetError(f"{engine} was built for compute capability {built}, this GPU is {here}: {hint}")
    return "same-sm"


def _numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
             "BOOL": np.bool_, "UINT8": np.uint8}
    for name, np_type in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return np.dtype(np_type)
    raise ModelError(f"TensorRT I/O tensor type {dtype} is not supported by edgetl's runner (use FP32/FP16 I/O)")


def _parse_device(device: int | str) -> tuple[int, int | None]:
    """(CUDA device index, DLA core or None) from ``0``, ``"cuda:1"``, ``"GPU"``, ``"GPU.1"`` or ``"DLA:1"`` (a
    Jetson's DLA core: the core is built into the engine, the CUDA device is the module's GPU 0)."""
    text = str(device).strip().lower()
    if text.startswith("dla") and text[3:].lstrip(":.").isdigit():
        return 0, int(text[3:].lstrip(":."))
    for prefix in ("cuda", "gpu"):
        if text.startswith(prefix):
            text = text[len(prefix):].lstrip(":.") or "0"
    if not text.isdigit():
        raise ConfigError(f"tensorrt runner device must be a CUDA device such as 0, cuda:1 or GPU (or DLA:0 for an "
                          f"engine built for DLA core 0), not {device!r}")
    return int(text), None


class TensorRTRunner(Runner):
    """One engine, one execution context, one CUDA stream (optimization profile 0)."""

    runtime = "tensorrt"
    option_names = ("threads", "device")

    def __init__(self, artifact: str | Path, *, threads: int | None = None, device: int | str = 0,
                 **options: Any) -> None:
        super().__init__(artifact, threads=threads, **options)
        self.device, self.dla_core = _parse_device(device)
        self.engine = self.context = self.stream = None
        self.sidecar: dict[str, Any] = {}
        self._buffers: dict[str, Any] = {}

    def _gpu(self) -> _cuda.Device:
        gpus = _cuda.devices()
        if not gpus:
            raise TargetError(f"{self.artifact} is a TensorRT engine and needs an NVIDIA GPU; none is visible")
        if self.device >= len(gpus):
            raise TargetError(f"CUDA device {self.device} is not available on this machine ({len(gpus)} visible): "
                              f"choose device 0..{len(gpus) - 1}")
        return gpus[self.device]

    def _load_impl(self) -> None:
        trt = import_tensorrt()
        gpu = self._gpu()
        self.sidecar = read_sidecar(self.artifact)
        check_sidecar(self.artifact, self.sidecar, engine_sha256=sha256(self.artifact),
                      tensorrt_version=trt.__version__, compute_capability=gpu.compute_capability,
                      platform=_cuda.platform_name())
        built_for = self.sidecar.get("dla_core")
        if self.dla_core is not None and self.dla_core != built_for:
            where = "the GPU" if built_for is None else f"DLA core {built_for}"
            raise TargetError(f"{self.artifact} was built for {where}, not DLA:{self.dla_core}: the DLA core is part "
                              f"of the engine, so rebuild it with `edgetl compile {self.artifact.parent} --dla-core "
                              f"{self.dla_core}`")
        self._cuda = _cuda.polygraphy_cuda()
        _cuda.set_device(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        if self.sidecar["version_compatible"]:  # the plan embeds TensorRT's lean runtime: trusted, we built it
            self._trt_runtime.engine_host_code_allowed = True
        if self.sidecar.get("dla_core") is not None:
            self._trt_runtime.DLA_core = int(self.sidecar["dla_core"])
        self.engine = self._trt_runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT {trt.__version__} could not deserialise {self.artifact} (see TensorRT's "
                             f"message above): {rebuild_hint(self.artifact)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or not self.outputs:
            raise ModelError(f"{self.artifact} has inputs {self.inputs} and outputs {self.outputs}: "
                             "edgetl expects one image input and a logits output")
        self.stream = self._cuda.Stream()

    def input_range(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
        """(min, opt, max) input shapes of profile 0 for a dynamic engine, else None."""
        name = self.inputs[0]
        if -1 not in tuple(self.engine.get_tensor_shape(name)):
            return None
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(opt), tuple(high)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """The device buffer of tensor ``name``, grown when a larger batch comes."""
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = self._cuda.DeviceArray(shape=shape, dtype=dtype)
        else:
            buffer.resize(shape)  # reallocates only when the new shape needs more bytes
        return buffer

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        trt = import_tensorrt()
        name = self.inputs[0]
        bounds = self.input_range()
        if bounds and not all(lo <= n <= hi for lo, n, hi in zip(bounds[0], batch.shape, bounds[2])):
            raise ModelError(f"input shape {batch.shape} is outside the engine's optimization profile "
                             f"{bounds[0]}..{bounds[2]}: rebuild with a wider profile or use another batch size")
        host = np.ascontiguousarray(batch.astype(_numpy_dtype(trt, self.engine.get_tensor_dtype(name)), copy=False))
        if not self.context.set_input_shape(name, host.shape):
            raise ModelError(f"TensorRT rejected input shape {host.shape} for {name}")
        self._buffer(name, host.shape, host.dtype).copy_from(host, self.stream)
        self.context.set_tensor_address(name, self._buffers[name].ptr)
        results = {}
        for out in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(out))
            results[out] = np.empty(shape, _numpy_dtype(trt, self.engine.get_tensor_dtype(out)))
            self.context.set_tensor_address(out, self._buffer(out, shape, results[out].dtype).ptr)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise ModelError(f"TensorRT execution failed for {self.artifact} (see TensorRT's message above)")
        for out, host_out in results.items():
            self._buffers[out].copy_to(host_out, self.stream)
        self.stream.synchronize()
        return results[self.outputs[0]].astype(np.float32, copy=False)

    def _describe_impl(self) -> RunnerInfo:
        trt = import_tensorrt()
        gpu = self._gpu()
        sidecar = self.sidecar
        precision = sidecar.get("executed_precision") or f"{sidecar['precision']} (requested; layer precisions unknown)"
        dla = sidecar.get("dla_core")
        return RunnerInfo(runtime="tensorrt", version=trt.__version__,
                          device=f"cuda:{self.device}" + (f" DLA:{dla}" if dla is not None else ""),
                          precision=str(precision), threads=None,
                          extra={"tensorrt_version": trt.__version__, "gpu": gpu.name,
                                 "compute_capability": gpu.compute_capability,
                                 "driver": _cuda.kernel_driver_version(), "cuda_driver": _cuda.driver_cuda_version(),
                                 "requested_precision": sidecar["precision"],
                                 "layer_precisions": sidecar.get("layer_precisions"), "dla_core": dla,
                                 "io_tensors": self.inputs + self.outputs, "profile": self.input_range(),
                                 "sidecar": sidecar})

    def close(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        if self.stream is not None:
            self.stream.free()
        self._buffers = {}
        self.context = self.engine = self.stream = None
        super().close()
