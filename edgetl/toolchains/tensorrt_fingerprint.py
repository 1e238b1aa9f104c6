"""The TensorRT build behind ``edgetl compile`` (Python API), and the fingerprint it writes beside the engine.

:func:`build_plan` sets up the builder from the engine settings (network typing, precision flags where they
still exist, optimization profile, workspace, timing cache, DLA, portability) and returns the raw plan;
:func:`layer_report` asks the engine inspector for its layers; :func:`fingerprint` is ``model.engine.json``.

An engine runs only where it was built (TensorRT version, GPU architecture, platform) unless built
version- or hardware-compatible; the plan file stays raw (trtexec, DeepStream and C++ load it), so these
facts live in the sidecar. The runner (:mod:`edgetl.backends.tensorrt`) checks :data:`SIDECAR_KEYS` before
deserialising. Schema 1::

    schema, engine, engine_sha256, engine_bytes          the plan this describes
    tensorrt_version, cuda_driver, driver                 software it was built with
    gpu, compute_capability, gpu_memory_mib, platform     hardware ("jetson" or "gpu")
    l4t, jetpack, module                                  Jetson release and module (null elsewhere)
    hardware_compatibility, version_compatible            portability ("none" | "ampere+" | "same-compute-capability")
    device, dla_core, gpu_fallback_layers                 "GPU" or "DLA:N"; layers DLA cannot run
    precision, strongly_typed, executed_precision         requested; typing; what the layers run in ("int8+fp16")
    layer_precisions                                      {precision: layer count} from the engine inspector
    source {onnx, sha256}, engine_settings, profile       what it was built from and with
    built, build_s, edgetl                                when, how long, which edgetl
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import utc_now
from .._lazy import version_tuple
from ..backends import _cuda
from ..errors import ConfigError, ModelError, TargetError

log = logging.getLogger(__name__)
ENGINE_NAME = "model.engine"

SCHEMA = 1
COMPUTE_PRECISIONS = ("int8", "fp8", "fp16", "bf16", "fp32")
"""Order of the executed-precision headline (``int8+fp16``)."""
_NOT_COMPUTE = {"Reformat", "NoOp"}
"""Layer types left out of the precision count: format conversions, not the model's arithmetic."""
_PRECISION_PATTERNS = (  # tested in this order against an inspector "Format/Datatype" string
    ("fp8", r"\bFP8\b"), ("bf16", r"\bBF(?:loat)?16\b"), ("uint8", r"\bUInt8\b"), ("int8", r"\bInt8\b|\bINT8\b"),
    ("fp16", r"\bFP16\b|\bHalf\b"), ("fp32", r"\bFP32\b|\bFloat\b"), ("int32", r"\bInt32\b|\bINT32\b"),
    ("int64", r"\bInt64\b|\bINT64\b"), ("bool", r"\bBool\b|\bBOOL\b"))


def layers_name(engine: str) -> str:
    """The layer report beside an engine: ``layers.json`` for ``model.engine``, else ``<stem>.layers.json``."""
    return "layers.json" if Path(engine).name == ENGINE_NAME else f"{Path(engine).stem}.layers.json"


def profile_batches(settings: Any) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimization profile; DLA has no dynamic shapes, so with a DLA core it is
    the static opt batch (TensorRT's DLA restrictions: min = opt = max)."""
    if settings.dla_core is not None:
        return settings.opt_batch, settings.opt_batch, settings.opt_batch
    return settings.min_batch, settings.opt_batch, settings.max_batch


def tensor_precision(description: str) -> str | None:
    """``"Channel major FP16 format where channel % 8 == 0"`` -> ``fp16`` (None when unknown)."""
    for name, pattern in _PRECISION_PATTERNS:
        if re.search(pattern, description, flags=re.IGNORECASE if name in ("fp16", "fp32") else 0):
            return name
    return None


def layer_precisions(info: str | dict[str, Any] | None) -> dict[str, int]:
    """Layers per precision from the engine inspector's JSON (a layer's precision is its first input's,
    as NVIDIA's TREx counts it); {} without a detailed report (profiling verbosity below DETAILED)."""
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            return {}
    counts: dict[str, int] = {}
    for layer in (info or {}).get("Layers", []):
        if not isinstance(layer, dict) or layer.get("LayerType") in _NOT_COMPUTE or not layer.get("Inputs"):
            continue
        first = layer["Inputs"][0]
        precision = tensor_precision(str(first.get("Format/Datatype", ""))) if isinstance(first, dict) else None
        if precision:
            counts[precision] = counts.get(precision, 0) + 1
    return counts


def executed_precision(counts: dict[str, int]) -> str | None:
    """``{"int8": 40, "fp16": 9, "int32": 1}`` -> ``"int8+fp16"`` (None when nothing was counted)."""
    return "+".join(p for p in COMPUTE_PRECISIONS if counts.get(p)) or None


def device_facts(gpu: _cuda.Device) -> dict[str, Any]:
    """The machine an engine is built on: GPU, drivers, platform and (on a Jetson) the L4T / JetPack release."""
    release = _cuda.jetson_release()
    return {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "gpu_memory_mib": gpu.memory_mib,
            "cuda_driver": _cuda.driver_cuda_version(), "driver": _cuda.kernel_driver_version(),
            "platform": _cuda.platform_name(), "l4t": release.get("l4t"), "jetpack": release.get("jetpack"),
            "module": release.get("module")}


def fingerprint(*, engine_name: str, plan: bytes, plan_sha256: str, tensorrt_version: str, gpu: _cuda.Device,
                settings: Any, precision: str, strongly_typed: bool, onnx_name: str, onnx_sha256: str,
                layer_info: str | None, fallback_layers: list[str], profile: dict[str, Any],
                build_s: float) -> dict[str, Any]:
    """The sidecar of one engine (see the module docstring for the schema)."""
    counts = layer_precisions(layer_info)
    return {
        "schema": SCHEMA, "engine": engine_name, "engine_sha256": plan_sha256, "engine_bytes": len(plan),
        "tensorrt_version": tensorrt_version, **device_facts(gpu),
        "hardware_compatibility": settings.hardware_compatibility, "version_compatible": settings.version_compatible,
        "device": "GPU" if settings.dla_core is None else f"DLA:{settings.dla_core}", "dla_core": settings.dla_core,
        "gpu_fallback_layers": fallback_layers, "precision": precision, "strongly_typed": strongly_typed,
        "executed_precision": executed_precision(counts), "layer_precisions": counts,
        "source": {"onnx": onnx_name, "sha256": onnx_sha256}, "engine_settings": settings.to_dict(),
        "profile": profile, "built": utc_now(), "build_s": round(build_s, 2), "edgetl": __version__}


def pretty_layer_report(layer_info: str) -> str:
    """The inspector's JSON, indented for people (unchanged when it is not JSON)."""
    try:
        return json.dumps(json.loads(layer_info), indent=2) + "\n"
    except json.JSONDecodeError:
        return layer_info


# -- the build -------------------------------------------------------------------------------------
def build_plan(trt: Any, logger: Any, onnx: Path, settings: Any, strongly_typed: bool, precision: str,
               input_spec: dict[str, Any], timing_cache: bytes) -> tuple[bytes, bytes, list[str], dict[str, Any]]:
    """(raw plan, updated timing cache, layers DLA cannot run, profile shapes) of ``onnx`` built with ``settings``."""
    version = version_tuple(trt.__version__)
    builder = trt.Builder(logger)
    # TensorRT 11: strong typing is always on and its flag (value 0 there) is deprecated, so no flag at all
    typed_flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed and version < (11,) else 0
    network = builder.create_network(typed_flag)
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s (%s)", onnx.name, "strongly typed" if strongly_typed else "precision flags")
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)] or ["no reason given"]
        for error in errors:
            log.error("TensorRT ONNX parser: %s", error)
        more = f" (and {len(errors) - 1} more, logged above)" if len(errors) > 1 else ""
        raise ModelError(f"TensorRT's ONNX parser rejected {onnx}: {errors[0].splitlines()[0]}{more}")
    config = builder.create_builder_config()
    if not strongly_typed:
        _precision_flags(trt, config, precision, version)
    profile = _profile(builder, network, config, settings, input_spec, onnx)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.builder_optimization_level = settings.optimization_level
    _timing_cache(config, timing_cache)
    _portability(trt, config, settings)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    fallback = _dla(trt, builder, network, config, settings)
    log.info("building the engine on %s (TensorRT %s): this can take minutes on a Jetson",
             "GPU" if settings.dla_core is None else f"DLA core {settings.dla_core}", trt.__version__)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT {trt.__version__} could not build an engine from {onnx.name}: see TensorRT's "
                         "messages above for the layer or setting it refused")
    return bytes(plan), bytes(config.get_timing_cache().serialize()), fallback, profile


def _precision_flags(trt: Any, config: Any, precision: str, version: tuple[int, ...]) -> None:
    """INT8 + FP16 (int8) or FP16 (fp16): the precisions TensorRT < 11 may pick per layer, weakly typed."""
    if version >= (11,):
        raise ConfigError("TensorRT 11 has no precision flags: build strongly typed")
    if version >= (10, 12):
        log.warning("TensorRT %s deprecates the precision flags: prefer the strongly typed build", trt.__version__)
    for flag in {"int8": ("INT8", "FP16"), "fp16": ("FP16",), "fp32": ()}[precision]:
        config.set_flag(getattr(trt.BuilderFlag, flag))


def _profile(builder: Any, network: Any, config: Any, settings: Any, input_spec: dict[str, Any],
             onnx: Path) -> dict[str, Any]:
    """Optimization profile 0 over the batch sizes of ``settings`` (a fixed-batch model keeps its shape)."""
    if network.num_inputs != 1:
        raise ModelError(f"{onnx} has {network.num_inputs} inputs: edgetl engines take one image input")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if input_spec.get("name") not in (None, tensor.name):
        raise ModelError(f"{onnx} has input {tensor.name!r}, build.json says {input_spec['name']!r}: export again")
    chw = tuple(int(d) for d in input_spec.get("shape") or shape[1:])
    if shape[0] != -1:
        log.warning("%s has a fixed batch of %d: the engine serves only that batch", onnx.name, shape[0])
        return {"input": tensor.name, "min": list(shape), "opt": list(shape), "max": list(shape)}
    low, opt, high = profile_batches(settings)
    if settings.dla_core is not None and (settings.min_batch, settings.max_batch) != (opt, opt):
        log.warning("DLA has no dynamic shapes: building batch %d only (not %d..%d)", opt, settings.min_batch,
                    settings.max_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (low, *chw), (opt, *chw), (high, *chw))
    config.add_optimization_profile(profile)
    return {"input": tensor.name, "min": [low, *chw], "opt": [opt, *chw], "max": [high, *chw]}


def _timing_cache(config: Any, data: bytes) -> None:
    """Reuse the saved timing cache; one made on another GPU or TensorRT starts over (it would be refused)."""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("the saved timing cache was made on another GPU or TensorRT version: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    elif data:
        log.info("reusing the timing cache (%d KiB)", len(data) >> 10)


def _portability(trt: Any, config: Any, settings: Any) -> None:
    level = settings.hardware_compatibility
    if level != "none":
        name = {"ampere+": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}[level]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, name)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)


def _dla(trt: Any, builder: Any, network: Any, config: Any, settings: Any) -> list[str]:
    """Send the network to DLA core ``settings.dla_core``; the layers that fall back to the GPU."""
    core = settings.dla_core
    if core is None:
        return []
    available = int(builder.num_DLA_cores)
    if core >= available:
        cores = f"DLA cores 0..{available - 1}" if available else "no DLA core"
        raise TargetError(f"DLA core {core} was asked for, but TensorRT {trt.__version__} sees {cores} on this device "
                          "(Orin Nano has none; TensorRT 11.0-11.4.0 have none on Jetson): drop --dla-core or pass "
                          "--no-dla")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    if settings.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    fallback = [layer.name for layer in layers if not config.can_run_on_DLA(layer)]
    if fallback and not settings.gpu_fallback:
        raise ConfigError(f"{len(fallback)} layers cannot run on DLA (first: {fallback[0]}) and GPU fallback is off: "
                          "turn gpu_fallback on or build for the GPU (--no-dla)")
    if fallback:
        log.warning("%d of %d layers fall back to the GPU: %s", len(fallback), len(layers),
                    ", ".join(fallback[:5]) + (", ..." if len(fallback) > 5 else ""))
    return fallback


def layer_report(trt: Any, logger: Any, plan: bytes, settings: Any) -> str | None:
    """The engine inspector's JSON layer information (None, with a warning, when it cannot be had)."""
    runtime = trt.Runtime(logger)
    if settings.version_compatible:
        runtime.engine_host_code_allowed = True
    if settings.dla_core is not None:
        runtime.DLA_core = settings.dla_core
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        log.warning("TensorRT could not load the engine it just built, so there is no layer report")
        return None
    return engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
