"""Toolchains build a target's artifacts from the run's float ONNX; runtimes (:mod:`edgetl.backends`) run them.

One table: a profile's ``toolchain`` (default: its ``runtime``) names a row; nothing is imported until a
toolchain is asked for. Adding a target family (TensorRT next) is one module and one row.
"""

from __future__ import annotations


from .._lazy import load_attr
from ..errors import TargetError, did_you_mean
from .base import SavedArtifact, Toolchain

TOOLCHAINS = {"openvino": "edgetl.toolchains.openvino:OpenVINOToolchain",
              "tensorrt": "edgetl.toolchains.tensorrt:TensorRTToolchain"}


def get_toolchain(name: str) -> Toolchain:
    if name not in TOOLCHAINS:
        raise TargetError(f"no toolchain {name!r} to build with.{did_you_mean(name, list(TOOLCHAINS))} "
                          f"Known: {', '.join(TOOLCHAINS)}")
    return load_attr(TOOLCHAINS[name])()


__all__ = ["TOOLCHAINS", "SavedArtifact", "Toolchain", "get_toolchain"]
