"""TensorRT engines from an export: the trtexec lines recorded in build.json, and ``edgetl compile``.

Two TensorRT generations are alive at once (see FIELD-NOTES): JetPack 6's TensorRT 10.3 builds the FP32
Q/DQ ONNX with the precision flags ``--int8 --fp16`` (``--fp16`` for fp16, none for fp32: the documented
JetPack 6 path, DLA included); TensorRT >= 10.12 deprecates those flags and 11 removes them, so there the
precision lives in the ONNX and the strongly typed file (FP16 float tensors, Q/DQ kept) is built with
``--stronglyTyped`` (required on 10.12-10.x, a no-op in 11). ``compile_engine`` does the same through the
Python API on the device and writes the raw plan, its layer report and its fingerprint
(:mod:`.tensorrt_fingerprint`); from a run folder it records the stage ``TARGET:PRECISION:engine``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_path, read_json, sha256, write_text
from .._lazy import version_tuple
from ..backends import _cuda
from ..backends import tensorrt as trt_backend
from ..errors import ConfigError, IntegrityError, MissingBackendError, RunFolderError, TargetError
from ..profiles import PRECISIONS
from ..run.builds import built, choose_build
from ..run.keys import StageKey, Status
from ..run.manifest import Manifest, is_run_folder
from ..run.safe_paths import run_relative
from .tensorrt_fingerprint import ENGINE_NAME, layers_name, profile_batches
from .trt_settings import OVERRIDES, CompileConfig, EngineSettings, Hardware  # noqa: F401  (CompileConfig: public here too)

log = logging.getLogger(__name__)
STRONGLY_TYPED_FROM = (10, 12)
"""TensorRT deprecates the precision flags here: builds are strongly typed by default from this version."""
PRECISION_FLAGS = {"int8": ("--int8", "--fp16"), "fp16": ("--fp16",), "fp32": ()}
TRTEXEC_LEVELS = {"ampere+": "ampere+", "same-compute-capability": "sameComputeCapability"}
NO_DLA_NOTE = ("TensorRT 11.0-11.4.0 have no DLA on Jetson (11.4.1 with JetPack 7.2.2+ has it on AGX Orin only), "
               "nor do 10.8-10.x (10.7 was the last 10.x with DLA): on JetPack 6 use the tensorrt-10.3 line")


def check_portability(settings: EngineSettings, platform: str, compute_capability: str | None) -> None:
    """A hardware-compatibility request the platform or GPU cannot serve is a one-line TargetError."""
    level = settings.hardware_compatibility
    if level == "none":
        return
    if platform == "jetson":
        raise TargetError(f"--hardware-compatibility {level}: TensorRT has no hardware-compatible engines on Jetson "
                          "(JetPack); build the engine on the module itself and drop the option")
    needed = (8, 0) if level == "ampere+" else (7, 5)
    if compute_capability and version_tuple(compute_capability) < needed:
        raise TargetError(f"--hardware-compatibility {level} needs a GPU of compute capability >= "
                          f"{needed[0]}.{needed[1]} to build on, this one is {compute_capability}")


# -- trtexec -------------------------------------------------------------------------------------------
def trtexec_commands(onnx: dict[str, str], settings: EngineSettings, precision: str, input_name: str,
                     input_shape: tuple[int, int, int], hardware: Hardware, engine: str = ENGINE_NAME
                     ) -> dict[str, str]:
    """The complete trtexec command building ``engine`` per TensorRT generation (paths shell-quoted).

    ``onnx``: ``{"precision-flags": FP32 Q/DQ or float file, "strongly-typed": file with the precision in it}``.
    ``tensorrt-10.3``: that first file with the precision flags (JetPack 6). ``tensorrt-11``: the strongly typed
    file with ``--stronglyTyped`` (so the line also serves TensorRT 10.12-10.x). :func:`trtexec_notes` says
    what a line cannot do on some devices (DLA on TensorRT 11, ...)."""
    if precision not in PRECISION_FLAGS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISION_FLAGS)}, not {precision!r}")
    flags_file = onnx.get("precision-flags") or onnx.get("strongly-typed")
    typed_file = onnx.get("strongly-typed") or flags_file
    if not flags_file:
        raise ConfigError("trtexec_commands needs the ONNX file names: {'precision-flags': ..., 'strongly-typed': ...}")
    check_portability(settings, hardware.platform, hardware.compute_capability)
    common = _trtexec_common(settings, input_name, input_shape, engine)
    legacy = ["trtexec", f"--onnx={flags_file}", *PRECISION_FLAGS[precision], *common,
              *_portable(settings, 10, engine)]
    modern = ["trtexec", f"--onnx={typed_file}", "--stronglyTyped", *common, *_portable(settings, 11, engine)]
    return {"tensorrt-10.3": shlex.join(legacy), "tensorrt-11": shlex.join(modern)}


def _trtexec_common(settings: EngineSettings, input_name: str, input_shape: tuple[int, ...], engine: str) -> list[str]:
    dims = "x".join(str(d) for d in input_shape)
    low, opt, high = profile_batches(settings)
    args = [f"--saveEngine={engine}", f"--minShapes={input_name}:{low}x{dims}",
            f"--optShapes={input_name}:{opt}x{dims}", f"--maxShapes={input_name}:{high}x{dims}",
            f"--memPoolSize=workspace:{settings.workspace_mib}M",  # trtexec units: K, M, G (binary)
            f"--builderOptimizationLevel={settings.optimization_level}", f"--timingCacheFile={settings.timing_cache}"]
    if settings.dla_core is not None:
        args.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            args.append("--allowGPUFallback")
    return args


def _portable(settings: EngineSettings, major: int, engine: str) -> list[str]:
    args = []
    level = settings.hardware_compatibility
    if level == "ampere+" or (level == "same-compute-capability" and major >= 11):  # sameComputeCapability: >= 10.9
        args.append(f"--hardwareCompatibilityLevel={TRTEXEC_LEVELS[level]}")
    if settings.version_compatible:
        args.append("--versionCompatible")
    if settings.sparse_weights:
        args.append("--sparsity=enable")
    return [*args, "--profilingVerbosity=detailed", f"--exportLayerInfo={layers_name(engine)}", "--skipInference"]


def trtexec_notes(onnx: dict[str, str], settings: EngineSettings, precision: str) -> list[str]:
    """What the :func:`trtexec_commands` lines cannot do everywhere, one sentence each (for build.json)."""
    notes = []
    if settings.dla_core is not None:
        notes.append(f"tensorrt-11 --useDLACore: {NO_DLA_NOTE}")
        if settings.min_batch != settings.max_batch:
            notes.append(f"DLA has no dynamic shapes: both lines build batch {settings.opt_batch} only "
                         f"(not {settings.min_batch}..{settings.max_batch})")
        if precision == "fp32":
            notes.append("DLA runs FP16 and INT8 only: an fp32 engine runs every layer on the GPU")
    if settings.hardware_compatibility == "same-compute-capability":
        notes.append("tensorrt-10.3: --hardwareCompatibilityLevel=sameComputeCapability needs TensorRT >= 10.9, so "
                     "the tensorrt-10.3 line leaves it out")
    if precision == "int8" and onnx.get("strongly-typed") in (None, onnx.get("precision-flags")):
        notes.append("tensorrt-11 builds the FP32 Q/DQ ONNX strongly typed: its unquantized layers run in FP32")
    if settings.version_compatible:
        notes.append("--versionCompatible: the engine loads on newer TensorRT of the same major version only")
    return notes


# -- edgetl compile ----------------------------------------------------------------------------------


@dataclass
class CompileResult:
    engine: Path
    sidecar: Path
    """The fingerprint ``<engine>.json`` the runner checks."""
    layers: Path | None
    """The engine inspector's layer report (None when TensorRT could not give one)."""
    onnx: Path
    """The ONNX the engine was built from."""
    precision: str
    """The export's precision (what was asked)."""
    executed_precision: str | None
    """What the engine's layers run in (``int8+fp16``), from the layer report."""
    strongly_typed: bool
    device: str
    """``GPU`` or ``DLA:N``."""
    build_s: float
    gpu_fallback_layers: list[str] = field(default_factory=list)
    stage: str | None = None
    """The manifest stage recorded (built from a run folder), else None."""
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Source:
    """The export an engine is built from."""

    folder: Path
    block: dict[str, Any]
    """build.json's ``tensorrt`` block."""
    target: str
    precision: str
    manifest: Manifest | None = None


def compile_engine(source: str | Path, config: CompileConfig | None = None, *, overwrite: bool = False,
                   verify: bool = True) -> CompileResult:
    """Build the TensorRT engine of an export on this device: ``source`` is a run folder (its
    ``TARGET/PRECISION`` export) or an artifact folder (the ONNX files + build.json, e.g. copied to a Jetson).

    ``config.output`` (and its fingerprint and layer report beside it) must be new, or an engine edgetl
    built, replaced only with ``overwrite``; the default engine is replaced by a rerun (see edgetl._outputs).
    The ONNX is checked against the sha256 its export recorded (``verify=False``: used anyway, with a warning)."""
    from .._outputs import ENGINE, claim_output, run_data_roots

    config = config or CompileConfig()
    src = resolve_source(Path(source), config)
    settings = engine_settings(src, config)
    engine = Path(config.output) if config.output else src.folder / ENGINE_NAME
    if src.manifest is not None and not engine.resolve().is_relative_to(src.manifest.run_dir.resolve()):
        raise ConfigError(f"--output {engine} is outside the run folder {src.manifest.run_dir}: a run keeps its "
                          f"engine inside it (or compile the artifact folder {src.folder} instead)")
    claim_output(engine, ENGINE, overwrite=overwrite, explicit=bool(config.output),
                 data_roots=run_data_roots(src.manifest) if src.manifest is not None else ())
    trt = _import_tensorrt(src.folder)
    gpu = _build_device(config.device, src.folder)
    version = version_tuple(trt.__version__)
    typed = _strongly_typed(config.strongly_typed, version)
    check_portability(settings, _cuda.platform_name(), gpu.compute_capability)
    if settings.hardware_compatibility == "same-compute-capability" and version < (10, 9):
        raise ConfigError(f"--hardware-compatibility same-compute-capability needs TensorRT >= 10.9, this is "
                          f"{trt.__version__}")
    onnx, onnx_sha256 = _verified_onnx(src, typed, verify)
    job = _Job(trt, src, settings, typed, onnx, onnx_sha256, engine, gpu, config.device)
    if src.manifest is None:
        return job.run()
    return _recorded(job, config, verify)


def engine_settings(src: _Source, config: CompileConfig) -> EngineSettings:
    """build.json's engine settings with the overrides given to ``edgetl compile``."""
    data = dict(src.block.get("engine") or {})
    data.update({key: getattr(config, key) for key in OVERRIDES if getattr(config, key) is not None})
    if config.no_dla:
        data["dla_core"] = None
    return EngineSettings.from_dict(data, f"{src.folder / 'build.json'}")


def _strongly_typed(requested: bool | None, version: tuple[int, ...]) -> bool:
    if version >= (11,):
        if requested is False:
            raise ConfigError("TensorRT 11 builds strongly typed networks only (the precision flags are gone): "
                              "drop the request for precision flags")
        return True
    return version >= STRONGLY_TYPED_FROM if requested is None else requested


def _import_tensorrt(folder: Path) -> Any:
    try:
        return trt_backend.import_tensorrt()
    except MissingBackendError as exc:
        error = MissingBackendError(exc.package, exc.extra, found=exc.found, required=exc.required)
        error.args = (f"{exc}. `edgetl compile` runs on the device that will run the engine (a Jetson or a machine "
                      f"with an NVIDIA GPU): copy {folder} there (its ONNX files and build.json) and run it there; "
                      "on a Jetson TensorRT comes with JetPack (`sudo apt install nvidia-jetpack`; use a venv made "
                      "with --system-site-packages)",)
        raise error from None


def _build_device(index: int, folder: Path) -> _cuda.Device:
    gpus = _cuda.devices()
    if not gpus:
        raise TargetError(f"no NVIDIA GPU is visible here: `edgetl compile` runs on the device that will run the "
                          f"engine (a Jetson or an NVIDIA GPU machine); copy {folder} (its ONNX files and build.json) "
                          "there and run it there")
    if index >= len(gpus):
        raise TargetError(f"CUDA device {index} is not available ({len(gpus)} visible): choose 0..{len(gpus) - 1}")
    return gpus[index]


# -- which export ----------------------------------------------------------------------------------
def resolve_source(source: Path, config: CompileConfig) -> _Source:
    """The export to build from a run folder or an artifact folder; one-line errors when none or several fit."""
    if is_run_folder(source):
        return _from_run(source, config)
    if (source / "build.json").is_file():
        src = _from_folder(source)
        for what, asked, found in (("target", config.target, src.target), ("precision", config.precision,
                                                                           src.precision)):
            if asked is not None and asked != found:
                raise ConfigError(f"{source} holds the {found} {what} export, not {asked}: pass the right folder")
        return src
    raise RunFolderError(f"{source} is neither a run folder (edgetl.json) nor an exported artifact folder "
                         "(build.json): pass RUN or RUN/TARGET/PRECISION")


def _from_folder(folder: Path) -> _Source:
    hint = f"export it again with `edgetl export RUN --target {folder.parent.name or 'jetson'}`"
    data = read_json(folder / "build.json", RunFolderError, f"{folder} has no build.json: {hint}", hint)
    block = data.get("tensorrt") if isinstance(data, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get("onnx"), dict):
        raise RunFolderError(f"{folder} is not a TensorRT export (its build.json has no 'tensorrt' block with the "
                             "ONNX files): export for a TensorRT target, e.g. `edgetl export RUN --target jetson`")
    if block.get("precision") not in PRECISIONS:
        raise RunFolderError(f"{folder / 'build.json'} is damaged: tensorrt.precision is {block.get('precision')!r}")
    target = data["target"].get("name") if isinstance(data.get("target"), dict) else None
    return _Source(folder, block, str(target or folder.parent.name), block["precision"])


def _from_run(run: Path, config: CompileConfig) -> _Source:
    from ..run.integrity import require_current

    manifest = Manifest.load(run)
    found = {key: run / (key.target or "") / (key.precision or "") for key in built(manifest, target=config.target)}
    exports = [key for key, folder in found.items() if _is_tensorrt_export(folder)]
    if not exports:
        asked = " ".join(f"--{k} {v}" for k, v in (("target", config.target), ("precision", config.precision)) if v)
        raise RunFolderError(f"{run} has no TensorRT export{' for ' + asked if asked else ''}: run "
                             f"`edgetl export {run} --target {config.target or 'jetson'}` first")
    key = choose_build(manifest, config.target, config.precision, exports, what="TensorRT export")
    name, folder = str(key), found[key]
    require_current(manifest, key)
    status = manifest.record(key).status
    if status != Status.COMPLETE:
        log.warning("%s: the export missed its accuracy budget (status %s); building its engine anyway", name, status)
    src = _from_folder(folder)
    src.manifest = manifest
    return src


def _is_tensorrt_export(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / "build.json").read_text(encoding="utf-8")).get("tensorrt"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _verified_onnx(src: _Source, strongly_typed: bool, verify: bool = True) -> tuple[Path, str]:
    """The ONNX this build uses, checked against the sha256 build.json (and the run's manifest) recorded."""
    files = src.block["onnx"]
    key, other = ("strongly-typed", "precision-flags") if strongly_typed else ("precision-flags", "strongly-typed")
    name = files.get(key) or files.get(other)
    if not name:
        raise RunFolderError(f"{src.folder / 'build.json'} names no ONNX file: export the target again")
    if strongly_typed and src.precision == "int8" and files.get(key) in (None, files.get(other)):
        log.warning("%s has no FP16 Q/DQ twin: built strongly typed, its unquantized layers run in FP32", name)
    path = src.folder / name
    if not path.is_file():
        raise RunFolderError(f"{path} is missing: copy the whole artifact folder (ONNX files and build.json), or "
                             "export the target again")
    actual = sha256(path)
    recorded = (src.block.get("sha256") or {}).get(name)
    if src.manifest is not None:
        recorded = recorded or src.manifest.recorded_sha256(run_relative(src.manifest.run_dir, path))
    if recorded and recorded != actual and not verify:
        log.warning("%s does not match the sha256 its export recorded: building it anyway (--no-verify)", path)
    elif recorded and recorded != actual:
        raise IntegrityError(f"{path} does not match the sha256 its export recorded (it changed or was copied "
                             f"incompletely): copy {src.folder} again, or re-run the export")
    return path, actual


def _recorded(job: _Job, config: CompileConfig, verify: bool = True) -> CompileResult:
    from ..run.stage import stage

    manifest, src = job.src.manifest, job.src
    name = str(StageKey.engine(src.target, src.precision))
    options = {"compile": asdict(config), "engine": job.settings.to_dict(), "strongly_typed": job.typed,
               "onnx": job.onnx.name}
    rel = run_relative(manifest.run_dir, job.onnx)
    with stage(manifest, name, options, [rel], verify=verify, busy_hint="another compile of it is running") as st:
        result = job.run()
        device = f"GPU.{job.device_index}" if result.device == "GPU" and job.device_index else result.device
        st.artifact(result.engine, runtime="tensorrt", precision=src.precision, format="tensorrt-plan",
                    device=device, executed_precision=result.executed_precision,
                    tensorrt_version=result.fingerprint["tensorrt_version"])
        st.artifact(result.sidecar)
        if result.layers is not None:
            st.artifact(result.layers)
        st.metrics.update(build_s=result.build_s, executed_precision=result.executed_precision,
                          layer_precisions=result.fingerprint["layer_precisions"],
                          gpu_fallback_layers=len(result.gpu_fallback_layers), strongly_typed=job.typed)
    result.stage = name
    return result


# -- the build -------------------------------------------------------------------------------------
@dataclass
class _Job:
    trt: Any
    src: _Source
    settings: EngineSettings
    typed: bool
    onnx: Path
    onnx_sha256: str
    engine: Path
    gpu: _cuda.Device
    device_index: int

    def run(self) -> CompileResult:
        from . import tensorrt_fingerprint as builder

        trt, settings = self.trt, self.settings
        if self.device_index:
            _cuda.set_device(self.device_index)
        logger = trt.Logger(trt.Logger.WARNING)
        cache_path = self.src.folder / settings.timing_cache
        start = time.perf_counter()
        plan, cache, fallback, profile = builder.build_plan(
            trt, logger, self.onnx, settings, self.typed, self.src.precision, self.src.block.get("input") or {},
            cache_path.read_bytes() if cache_path.is_file() else b"")
        build_s = time.perf_counter() - start
        layer_info = builder.layer_report(trt, logger, plan, settings)
        sidecar = builder.fingerprint(
            engine_name=self.engine.name, plan=plan, plan_sha256=hashlib.sha256(plan).hexdigest(),
            tensorrt_version=trt.__version__, gpu=self.gpu, settings=settings, precision=self.src.precision,
            strongly_typed=self.typed, onnx_name=self.onnx.name, onnx_sha256=self.onnx_sha256, layer_info=layer_info,
            fallback_layers=fallback, profile=profile, build_s=build_s)
        sidecar_file = trt_backend.sidecar_path(self.engine)
        with atomic_path(self.engine) as tmp_engine, atomic_path(sidecar_file) as tmp_sidecar:
            tmp_engine.write_bytes(plan)  # raw plan: trtexec, DeepStream and C++ load it as is
            tmp_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        layers = None
        if layer_info is not None:
            layers = write_text(self.engine.with_name(layers_name(self.engine.name)),
                                builder.pretty_layer_report(layer_info))
        try:
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(cache)
        except OSError as exc:  # a read-only copy of the export: the engine is built, only the cache is lost
            log.warning("could not save the timing cache %s (%s)", cache_path, exc)
        log.info("wrote %s (%.1f MiB, built in %.0f s; layers run in %s) and its fingerprint %s", self.engine,
                 len(plan) / 2**20, build_s, sidecar["executed_precision"] or "unknown precisions", sidecar_file.name)
        return CompileResult(self.engine, sidecar_file, layers, self.onnx, self.src.precision,
                             sidecar["executed_precision"], self.typed, sidecar["device"], round(build_s, 2),
                             fallback, fingerprint=sidecar)
