"""The one table of runtimes: name -> :class:`RuntimeSpec`.

Everything edgetl needs to know about a runtime without importing it lives in its row: the
runner class (as a ``module:Class`` string), the library and how to install it, the artifact
extensions it runs, and how reports show it. Bench, doctor and the plots read this table; adding
a runtime is one module in ``edgetl/backends/`` plus one row here.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._lazy import installed_version, lazy_import, version_tuple
from ..errors import ConfigError, MissingBackendError, did_you_mean

if TYPE_CHECKING:
    from .base import Runner


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime: its runner, its library, the files it runs and how reports show it."""

    name: str
    """Registry name, recorded as an artifact's ``runtime`` (``openvino``)."""
    runner: str
    """``module:Class`` of its :class:`~edgetl.backends.base.Runner` (imported only when used)."""
    module: str
    """Import name of the runtime library (``openvino``)."""
    package: str
    """pip distribution that provides the library."""
    extra: str | None
    """edgetl extra that installs it (None: a core dependency, ``pip install PACKAGE``)."""
    min_version: str | None
    """Oldest library version the runner works with (the floor in pyproject.toml)."""
    extensions: tuple[str, ...]
    """Artifact file extensions this runtime runs (lower case, with the dot)."""
    title: str
    """Name in reports (``ONNX Runtime``)."""
    colour: str
    """Plot colour."""
    purpose: str
    """What the library is needed for, in install hints."""

    @property
    def install_hint(self) -> str:
        return MissingBackendError.install_hint(self.package, self.extra, None if self.extra else self.min_version)

    def runner_class(self) -> type[Runner]:
        """The runner class (imports its edgetl module, not the runtime library)."""
        module_name, _, class_name = self.runner.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def import_library(self) -> ModuleType:
        """The runtime library, or :class:`MissingBackendError` with the install hint."""
        return lazy_import(self.module, extra=self.extra, package=self.package, purpose=self.purpose,
                           min_version=self.min_version)

    def status(self) -> dict[str, Any]:
        """``{installed, version}`` plus ``install`` (the pip command) when missing or too old; imports nothing."""
        if importlib.util.find_spec(self.module) is None:
            return {"installed": False, "install": self.install_hint}
        version = installed_version(self.package)
        state: dict[str, Any] = {"installed": True, "version": version or "unknown"}
        if version and self.min_version and version_tuple(version) < version_tuple(self.min_version):
            state.update(too_old=True, required=self.min_version,
                         install=MissingBackendError.install_hint(self.package, self.extra, self.min_version, True))
        return state


RUNTIMES: dict[str, RuntimeSpec] = {spec.name: spec for spec in (
    RuntimeSpec("torch", "edgetl.backends.torch_eager:TorchRunner", module="torch", package="torch", extra=None,
                min_version="2.2", extensions=(".pt", ".pth"), title="PyTorch eager", colour="#ee4c2c",
                purpose="PyTorch checkpoints"),
    RuntimeSpec("onnxruntime", "edgetl.backends.onnxruntime:OnnxRuntimeRunner", module="onnxruntime",
                package="onnxruntime", extra=None, min_version="1.18", extensions=(".onnx",), title="ONNX Runtime",
                colour="#4b6cb7", purpose="ONNX inference"),
    RuntimeSpec("openvino", "edgetl.backends.openvino:OpenVINORunner", module="openvino", package="openvino",
                extra="openvino", min_version="2024.4", extensions=(".xml",), title="OpenVINO", colour="#6a1b9a",
                purpose="Intel CPU targets"),
    RuntimeSpec("tensorrt", "edgetl.backends.tensorrt:TensorRTRunner", module="tensorrt", package="tensorrt",
                extra="tensorrt", min_version="10.0", extensions=(".engine", ".plan"), title="TensorRT",
                colour="#76b900", purpose="TensorRT engines"),
)}


def runtime_spec(name: str) -> RuntimeSpec:
    """The row of runtime ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}.{did_you_mean(name, list(RUNTIMES))} "
                          f"Known runtimes: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def runner_class(name: str) -> type[Runner]:
    """The runner class for runtime ``name`` (imports its module, not the runtime library itself)."""
    return runtime_spec(name).runner_class()


def create_runner(name: str, artifact: str | Path, **options: Any) -> Runner:
    """A runner of runtime ``name`` for ``artifact``; an option the runner does not take is a ConfigError."""
    return runner_class(name)(artifact, **options)


def extension_runtimes() -> dict[str, str]:
    """``{".onnx": "onnxruntime", ...}``: which runtime runs a file, by extension."""
    return {ext: spec.name for spec in RUNTIMES.values() for ext in spec.extensions}


def runtime_for_suffix(suffix: str) -> str | None:
    """The runtime that runs files ending in ``suffix`` (``.xml`` -> ``openvino``), or None."""
    return extension_runtimes().get(suffix.lower())
