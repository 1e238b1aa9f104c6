"""Torch-free CUDA for TensorRT: device facts for the build fingerprint, device buffers for the runner.

Device facts (count, name, compute capability, CUDA driver version, making a device current) come from the
CUDA *driver* API through ctypes on ``libcuda.so.1``: it ships with every NVIDIA driver and JetPack, so
``edgetl compile`` and the runner's compatibility check need nothing else. Buffers and the stream come
from Polygraphy's ``polygraphy.cuda`` (``DeviceArray``, ``Stream``), chosen over cuda-python because it is
pure Python (one wheel for x86, SBSA and Jetson), NVIDIA's own TensorRT companion, and binds whatever
``libcudart`` the machine has, while ``cuda-bindings`` wheels are tied to one CUDA major (12 for JetPack 6,
13 for JetPack 7 / PyPI TensorRT 11), which one extra cannot pick for the user. Polygraphy is imported
lazily (extra ``tensorrt``: ``polygraphy>=0.49``); the runtime library it loads is searched in
LD_LIBRARY_PATH, /usr/local/cuda/lib64, /usr/lib, /lib, and here also in pip's ``nvidia/cu13/lib`` and
``nvidia/cuda_runtime/lib``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TargetError

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
JETPACK_OF_L4T = {"36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1"}
"""L4T release -> JetPack, for boards without the ``nvidia-jetpack`` package (NVIDIA's JetPack archive)."""


@dataclass(frozen=True)
class Device:
    """One CUDA device as the driver reports it."""

    index: int
    name: str
    compute_capability: str
    """``"8.7"``."""
    memory_mib: int | None = None


# -- the driver API --------------------------------------------------------------------------------
@functools.cache
def _driver() -> Any:
    """``libcuda.so.1`` after ``cuInit(0)``, or None (no driver, or no GPU)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return lib if lib.cuInit(0) == 0 else None


def _call(lib: Any, name: str, *args: Any) -> None:
    status = getattr(lib, name)(*args)
    if status != 0:
        raise TargetError(f"CUDA driver call {name} failed with error {status}: check `nvidia-smi` (or `tegrastats` "
                          "on a Jetson) and the driver installation")


def devices() -> list[Device]:
    """Every CUDA device visible to this process ([] without a driver or a GPU)."""
    lib = _driver()
    if lib is None:
        return []
    count = ctypes.c_int()
    _call(lib, "cuDeviceGetCount", ctypes.byref(count))
    found = []
    for index in range(count.value):
        handle, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        _call(lib, "cuDeviceGet", ctypes.byref(handle), index)
        name = ctypes.create_string_buffer(256)
        _call(lib, "cuDeviceGetName", name, 256, handle)
        _call(lib, "cuDeviceGetAttribute", ctypes.byref(major), _CC_MAJOR, handle)
        _call(lib, "cuDeviceGetAttribute", ctypes.byref(minor), _CC_MINOR, handle)
        memory = ctypes.c_size_t()
        total = memory.value >> 20 if lib.cuDeviceTotalMem_v2(ctypes.byref(memory), handle) == 0 else None
        found.append(Device(index, name.value.decode(errors="replace"), f"{major.value}.{minor.value}", total))
    return found


def driver_cuda_version() -> str | None:
    """The newest CUDA version the driver supports (``cuDriverGetVersion``: 12060 -> ``"12.6"``)."""
    lib = _driver()
    version = ctypes.c_int()
    if lib is None or lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def set_device(index: int) -> None:
    """Make device ``index``'s primary context current on this thread (what ``cudaSetDevice`` does), so
    TensorRT and the CUDA runtime work on it."""
    lib = _driver()
    if lib is None:
        raise TargetError("no NVIDIA GPU is visible (the CUDA driver libcuda.so.1 is missing or finds no device)")
    handle, context = ctypes.c_int(), ctypes.c_void_p()
    _call(lib, "cuDeviceGet", ctypes.byref(handle), index)
    _call(lib, "cuDevicePrimaryCtxRetain", ctypes.byref(context), handle)
    _call(lib, "cuCtxSetCurrent", context)


# -- what machine this is ----------------------------------------------------------------------------
def platform_name() -> str:
    """``jetson`` on a Tegra board (L4T), else ``gpu``: engines do not move between the two."""
    return "jetson" if TEGRA_RELEASE.is_file() else "gpu"


def jetson_release() -> dict[str, str | None]:
    """``{l4t, jetpack, module}`` on a Jetson (None where unknown); {} elsewhere."""
    if not TEGRA_RELEASE.is_file():
        return {}
    text = TEGRA_RELEASE.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    l4t = None
    if match:
        parts = f"{match.group(1)}.{match.group(2)}".split(".")
        l4t = ".".join((parts + ["0"])[:3])
    module = None
    with contextlib.suppress(OSError):
        module = DEVICE_TREE_MODEL.read_bytes().decode(errors="replace").strip("\x00 \n") or None
    return {"l4t": l4t, "jetpack": _jetpack_package() or JETPACK_OF_L4T.get(l4t or ""), "module": module}


def _jetpack_package() -> str | None:
    """Version of the ``nvidia-jetpack`` apt package (``6.2.1+b38`` -> ``6.2.1``), when installed."""
    if not shutil.which("dpkg-query"):
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split("+")[0].strip() or None


def kernel_driver_version() -> str | None:
    """The NVIDIA kernel driver (``550.54.15``; JetPack 6: ``540.4.0``) from /proc, when it says."""
    with contextlib.suppress(OSError):
        match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)", NVIDIA_DRIVER_VERSION.read_text())
        if match:
            return match.group(1)
    return None


# -- buffers and streams (Polygraphy) ------------------------------------------------------------------
def polygraphy_cuda() -> Any:
    """``polygraphy.cuda`` with its CUDA runtime loaded, or a one-line error saying what is missing."""
    from .._lazy import lazy_import

    cuda = lazy_import("polygraphy.cuda", extra="tensorrt", package="polygraphy",
                       purpose="TensorRT inference (torch-free CUDA buffers)")
    with _wheel_runtimes_searched():
        try:
            cuda.wrapper()
        except Exception as exc:  # PolygraphyException (not found) or OSError (cannot load)
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise TargetError(f"Polygraphy could not load the CUDA runtime library libcudart.so ({first[:120]}): "
                              "install the CUDA runtime (JetPack has it; elsewhere `pip install "
                              "nvidia-cuda-runtime-cu12`) or add its folder to LD_LIBRARY_PATH") from None
    return cuda


@contextlib.contextmanager
def _wheel_runtimes_searched() -> Iterator[None]:
    """Let Polygraphy's search (it reads LD_LIBRARY_PATH once, when it loads the library) also see the CUDA
    runtime of pip's NVIDIA wheels; the variable is restored afterwards."""
    extra = [str(p) for entry in sys.path if entry and os.path.isdir(entry)
             for p in (Path(entry) / "nvidia" / "cu13" / "lib", Path(entry) / "nvidia" / "cuda_runtime" / "lib")
             if any(p.glob("libcudart.so*"))]
    old = os.environ.get("LD_LIBRARY_PATH")
    if extra:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([*(old.split(os.pathsep) if old else []), *extra])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old
