"""Target profiles: the devices ``edgetl export --target`` can build for, read from ``targets/*.yaml``.

Adding a device is adding a YAML file (shipped as package data ``edgetl.targets``), not code.
The loader lives here rather than in ``edgetl/targets.py`` because that import name belongs to the
data package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import field_types, typed_values
from .errors import ConfigError, EdgetlError, TargetError, did_you_mean
from .run.keys import Precision

PRECISIONS = Precision.values()  # ("fp32", "fp16", "int8")
DEFAULT_MAX_DROP = 1.0
"""Top-1 points a compressed build may lose when its profile names no budget: the published INT8 anchors for
the project's backbones (NNCF QAT MobileNetV2 0.8, V3-Small 0.7; TensorRT QAT EfficientNet-B0 1.15) sit at or
near it, and on a few hundred val images a point is a handful of images, not noise."""


@dataclass(frozen=True)
class TargetProfile:
    """One device a run can be compiled for."""

    name: str
    """Target name used on the command line, e.g. ``intel-cpu``."""
    description: str
    """One line for humans."""
    runtime: str
    """Runtime registry name (``openvino``, ``tensorrt``) that runs the artifact."""
    device: str
    """Device string the runtime is given (OpenVINO: ``CPU``)."""
    precisions: tuple[str, ...]
    """Precisions this target can serve."""
    default_precision: str
    """Precision used when ``--precision`` is not given."""
    runner_options: dict[str, Any] = field(default_factory=dict)
    """Options for the runner that evaluates and times the artifact."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """Backend-specific INT8 settings (e.g. NNCF preset)."""
    toolchain: str = ""
    """Toolchain (:mod:`edgetl.toolchains`) that builds the artifact (default: the one named like ``runtime``)."""
    hardware: dict[str, Any] = field(default_factory=dict)
    """Facts about the device the toolchain checks requests against (compute capability, DLA cores, ...)."""
    engine: dict[str, Any] = field(default_factory=dict)
    """Toolchain-specific builder defaults (TensorRT: :class:`~edgetl.toolchains.trt_settings.EngineSettings`)."""
    max_drop: float | None = DEFAULT_MAX_DROP
    """The accuracy budget of its FP16 and INT8 builds: the most top-1 points they may lose on the run's val
    split against the PyTorch float model (``--max-drop`` overrides; null: no budget)."""

    def __post_init__(self) -> None:
        if not self.toolchain:
            object.__setattr__(self, "toolchain", self.runtime)
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise TargetError(f"target {self.name}: precisions must be some of {PRECISIONS}, got {list(self.precisions)}")
        if self.default_precision not in self.precisions:
            raise TargetError(f"target {self.name}: default precision {self.default_precision!r} "
                              f"is not one of its precisions {list(self.precisions)}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise TargetError(f"target {self.name}: max_drop is in top-1 points (0-100), got {self.max_drop}")
        self._check_runner_options()

    def _check_runner_options(self) -> None:
        """The runtime is known and its runner takes ``runner_options`` and ``device`` (checked before any work)."""
        from .backends import runtime_spec

        if "device" in self.runner_options:
            raise TargetError(f"target {self.name}: set the device with the profile's `device:` key, "
                              "not in runner_options")
        try:
            runner = runtime_spec(self.runtime).runner_class()
            device = {"device": self.device} if "device" in runner.option_names else {}
            runner.check_options({**self.runner_options, **device})
        except EdgetlError as exc:
            raise TargetError(f"target {self.name}: {exc}") from None

    def check_precision(self, precision: str | None) -> str:
        """``precision`` (or the default) if this target serves it, else a :class:`TargetError`."""
        precision = precision or self.default_precision
        if precision not in self.precisions:
            raise TargetError(f"target {self.name} does not serve precision {precision!r}; "
                              f"choose one of: {', '.join(self.precisions)}")
        return precision

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> TargetProfile:
        required = ("name", "runtime", "device", "precisions")
        missing = [k for k in required if k not in data]
        if missing:
            raise TargetError(f"target profile {source or data.get('name')} lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise TargetError(f"target profile {source or data['name']} has unknown keys {unknown}")
        blocks = ("runner_options", "quantization", "hardware", "engine")  # an empty block reads as null
        try:  # the strict conversion of --config: precisions: int8 is one precision, not four letters
            values = typed_values(field_types(cls), {k: v for k, v in data.items() if not (k in blocks and v is None)},
                                  f"target profile {source or data['name']}", "key")
        except ConfigError as exc:
            raise TargetError(str(exc)) from None
        values.setdefault("description", "")
        values.setdefault("default_precision", values["precisions"][0] if values["precisions"] else "")
        return cls(**values)


def _profile_files() -> dict[str, Any]:
    from importlib.resources import files

    return {entry.name[:-5]: entry for entry in files("edgetl.targets").iterdir() if entry.name.endswith(".yaml")}


def list_targets() -> list[str]:
    return sorted(_profile_files())


def all_targets() -> list[TargetProfile]:
    """Every shipped profile, loaded (for ``edgetl targets``)."""
    return [load_target(name) for name in list_targets()]


def load_target(name: str) -> TargetProfile:
    """The profile ``targets/NAME.yaml``; unknown names list the known ones."""
    from ._yaml import load_yaml

    entries = _profile_files()
    if name not in entries:
        known = sorted(entries)
        raise TargetError(f"unknown target {name!r}.{did_you_mean(name, known)} Known targets: {', '.join(known)}")
    data = load_yaml(entries[name].read_text(encoding="utf-8"), f"target profile {name}.yaml", TargetError) or {}
    if not isinstance(data, dict):
        raise TargetError(f"target profile {name}.yaml must hold a mapping of keys to values")
    profile = TargetProfile.from_dict(data, source=f"{name}.yaml")
    if profile.name != name:
        raise TargetError(f"{name}.yaml declares name {profile.name!r}; the file name and the name must agree")
    return profile
