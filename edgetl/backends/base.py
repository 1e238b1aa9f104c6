"""The one protocol every runtime implements.

A runner wraps one artifact (a checkpoint, an ONNX file, an OpenVINO IR, a TensorRT engine).
``load()`` does the expensive part (parse, compile) so it can be timed apart from inference;
``infer()`` takes a float32 NCHW batch already preprocessed per the run's spec and returns
float32 logits; ``describe()`` says what actually executed (device, precision, threads).
Runners are context managers; ``infer`` loads on first use.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, EdgetlError, did_you_mean


@dataclass
class RunnerInfo:
    """What executed: reported next to every number a runner produces."""

    runtime: str
    version: str
    device: str
    precision: str
    """The precision that actually ran (e.g. OpenVINO may run an FP32 model in BF16)."""
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner(abc.ABC):
    runtime: str = ""
    """Registry name of the runtime (``torch``, ``onnxruntime``, ``openvino``, ``tensorrt``)."""
    option_names: ClassVar[tuple[str, ...]] = ("threads",)
    """Keyword options the constructor takes; anything else is a :class:`ConfigError`, never ignored."""

    def __init__(self, artifact: str | Path, *, threads: int | None = None, **unknown: Any) -> None:
        if unknown:
            raise self._unknown_option(next(iter(unknown)))
        self.artifact = Path(artifact)
        self.threads = threads
        self.loaded = False

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` unless this runner takes ``options`` (names, then values);
        loads nothing, so a profile's or a manifest's options can be checked before any work."""
        for name in options:
            if name not in cls.option_names:
                raise cls._unknown_option(name)
        cls("<options check>", **options)  # the constructor validates values without loading anything

    @classmethod
    def _unknown_option(cls, name: str) -> ConfigError:
        return ConfigError(f"{cls.runtime} runner does not take option {name!r}.{did_you_mean(name, cls.option_names)}"
                           f" It takes: {', '.join(cls.option_names)}")

    # -- public API (validates, then calls the backend's _impl) ----------------------------
    def load(self) -> Runner:
        if not self.loaded:
            if not self.artifact.exists():
                raise EdgetlError(f"{self.runtime} artifact not found: {self.artifact}")
            self._load_impl()
            self.loaded = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.dtype != np.float32:
            raise EdgetlError(f"runner input must be float32 NCHW, got {batch.dtype} with shape {batch.shape}")
        self.load()
        return np.asarray(self._infer_impl(np.ascontiguousarray(batch)), dtype=np.float32)

    def describe(self) -> RunnerInfo:
        self.load()
        return self._describe_impl()

    def close(self) -> None:
        self.loaded = False

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what each backend provides -------------------------------------------------------
    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, batch: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _describe_impl(self) -> RunnerInfo: ...
