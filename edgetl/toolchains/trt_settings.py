"""TensorRT engine settings: what `edgetl export --target jetson` records in build.json and what
`edgetl compile` (or trtexec on the device) builds the engine with.

Typed, validated against the target profile's hardware facts (a DLA core on a module without DLA is a
one-line error), and turned into the two trtexec command lines (TensorRT 10.3 with precision flags;
TensorRT >= 10.12 / 11 strongly typed) by :mod:`edgetl.toolchains.tensorrt_engine`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

from ..errors import ConfigError, TargetError
from ..profiles import PRECISIONS

CALIBRATION_METHODS = ("auto", "minmax", "entropy", "percentile")
"""The Q/DQ quantizer's ``calibration`` setting: a method of ONNX Runtime's calibrators, or ``auto`` (the one
that keeps held-out calibration images closest to float)."""
HARDWARE_COMPATIBILITY = ("none", "ampere+", "same-compute-capability")
"""trtexec --hardwareCompatibilityLevel values (sameComputeCapability from TensorRT 10.9)."""


@dataclass
class EngineSettings:
    """Builder settings of one TensorRT engine (defaults: the profile's ``engine:`` block, then these)."""

    min_batch: int = 1
    """Smallest batch of the optimization profile."""
    opt_batch: int = 1
    """Batch TensorRT tunes kernels for (edge apps run batch 1)."""
    max_batch: int = 8
    """Largest batch of the optimization profile."""
    workspace_mib: int = 1024
    """Builder workspace memory pool limit in MiB."""
    optimization_level: int = 3
    """Builder optimization level 0-5 (higher: longer builds, sometimes faster engines)."""
    dla_core: int | None = None
    """Run on this DLA core with GPU fallback (Jetson modules with DLA only)."""
    gpu_fallback: bool = True
    """With a DLA core: layers DLA cannot run fall back to the GPU."""
    hardware_compatibility: str = "none"
    """``none``, ``ampere+`` (runs on any Ampere or newer GPU) or ``same-compute-capability`` (TensorRT >= 10.9)."""
    version_compatible: bool = False
    """Engine loadable by later TensorRT versions (lean runtime; slower builds)."""
    sparse_weights: bool = False
    """Let TensorRT use 2:4 structured-sparse kernels on Ampere/Orin (weights must be 2:4 sparse)."""
    timing_cache: str = "timing.cache"
    """Timing cache file, relative to the artifact folder (saved and reused across builds)."""

    levels: ClassVar[tuple[str, ...]] = HARDWARE_COMPATIBILITY

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
                              f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if self.workspace_mib < 1:
            raise ConfigError(f"workspace_mib must be at least 1, got {self.workspace_mib}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimization_level must be 0-5, got {self.optimization_level}")
        if self.dla_core is not None and self.dla_core < 0:
            raise ConfigError(f"dla_core must be 0 or more, got {self.dla_core}")
        if self.hardware_compatibility not in self.levels:
            raise ConfigError(f"hardware_compatibility must be one of {', '.join(self.levels)}, "
                              f"not {self.hardware_compatibility!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> EngineSettings:
        """Settings from a dict (profile ``engine:`` block, build.json); an unknown key is a ConfigError."""
        from ..config import settings_from_dict

        return settings_from_dict(cls, data, source, "engine setting")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Hardware:
    """Facts about a TensorRT target device, from the profile's ``hardware:`` block."""

    platform: str = "gpu"
    """``jetson`` (Tegra, engines built on the module) or ``gpu`` (discrete NVIDIA GPU)."""
    compute_capability: str | None = None
    """SM version every device of the profile has (Orin: 8.7); None: any GPU."""
    dla_cores: dict[str, int] | None = None
    """DLA cores per memory variant (e.g. Orin NX: {"8GB": 1, "16GB": 2}); {} or None: no DLA."""
    tensorrt: dict[str, str] | None = None
    """TensorRT generations the device runs, e.g. {"10": "10.3 (JetPack 6.1/6.2)", "11": ...}."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> Hardware:
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise TargetError(f"{source} hardware keys {unknown} are unknown; it takes: {', '.join(known)}")
        cc = data.get("compute_capability")
        return cls(platform=data.get("platform", "gpu"), compute_capability=None if cc is None else str(cc),
                   dla_cores=dict(data.get("dla_cores") or {}), tensorrt=dict(data.get("tensorrt") or {}))

    @property
    def max_dla_cores(self) -> int:
        return max(self.dla_cores.values(), default=0) if self.dla_cores else 0

    def check_dla(self, target: str, dla_core: int | None) -> None:
        """A DLA request the module cannot serve is a one-line :class:`TargetError`."""
        if dla_core is None:
            return
        if not self.max_dla_cores:
            raise TargetError(f"target {target} has no DLA (deep learning accelerator): drop --dla-core, "
                              "or choose jetson-orin-nx or jetson-agx-orin")
        if dla_core >= self.max_dla_cores:
            variants = ", ".join(f"{k}: {v}" for k, v in (self.dla_cores or {}).items())
            raise TargetError(f"target {target} has DLA cores 0..{self.max_dla_cores - 1} ({variants}); "
                              f"--dla-core {dla_core} does not exist")


# -- edgetl compile (here, not in tensorrt_engine: the CLI builds its options at start-up) -----------
@dataclass
class CompileConfig:
    """What ``edgetl compile`` builds: an export's ONNX into a TensorRT engine, on the device itself."""

    precision: Literal["fp32", "fp16", "int8"] | None = None
    """Export to build: fp32, fp16 or int8 (default: the only one, else int8)."""
    target: str | None = None
    """Target whose export to build (default: the one the run or build.json holds)."""
    min_batch: int | None = None
    """Smallest batch of the optimization profile (default: build.json's engine settings)."""
    opt_batch: int | None = None
    """Batch TensorRT tunes kernels for (default: build.json's)."""
    max_batch: int | None = None
    """Largest batch of the optimization profile (default: build.json's)."""
    workspace_mib: int | None = None
    """Builder workspace limit in MiB (default: build.json's)."""
    optimization_level: int | None = None
    """Builder optimization level 0-5 (default: build.json's)."""
    dla_core: int | None = None
    """Run on this DLA core with GPU fallback (default: build.json's; Jetson modules with DLA only)."""
    no_dla: bool = False
    """Build for the GPU even when build.json names a DLA core."""
    hardware_compatibility: Literal["none", "ampere+", "same-compute-capability"] | None = None
    """none, ampere+ or same-compute-capability (TensorRT >= 10.9; default: build.json's)."""
    version_compatible: bool | None = None
    """Engine loadable by newer TensorRT of the same major version (default: build.json's)."""
    sparse_weights: bool | None = None
    """Allow 2:4 structured-sparse kernels (default: build.json's)."""
    strongly_typed: bool | None = None
    """Build the strongly typed ONNX (default: when TensorRT >= 10.12; always on TensorRT 11)."""
    output: str | None = None
    """Engine file (default: model.engine in the artifact folder)."""
    device: int = 0
    """CUDA device to build on."""

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise ConfigError(f"hardware_compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                              f"not {self.hardware_compatibility!r}")
        if self.no_dla and self.dla_core is not None:
            raise ConfigError("--no-dla and --dla-core contradict each other: pass one")
        if self.device < 0:
            raise ConfigError(f"device must be a CUDA device index (0 or more), not {self.device}")


OVERRIDES = ("min_batch", "opt_batch", "max_batch", "workspace_mib", "optimization_level", "dla_core",
             "hardware_compatibility", "version_compatible", "sparse_weights")
"""CompileConfig fields that override build.json's engine settings."""
