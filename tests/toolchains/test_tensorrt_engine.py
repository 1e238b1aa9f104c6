"""TensorRT engines from an export without TensorRT or a GPU: the trtexec lines per TensorRT generation, and
``compile_engine`` end to end against a fake ``tensorrt`` module that records what it is asked (typing,
precision flags, profile, workspace, timing cache, DLA, portability), writes and records the engine.
One real compile + run test needs TensorRT and a GPU (marked ``tensorrt`` and ``gpu``)."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl._io import sha256, write_json
from edgetl._lazy import version_tuple
from edgetl.backends import _cuda
from edgetl.backends import tensorrt as trt_backend
from edgetl.cli import cli
from edgetl.errors import (ConfigError, IntegrityError, MissingBackendError, ModelError, RunFolderError,
                           TargetError)
from edgetl.run.manifest import Manifest
from edgetl.run.stage import stage
from edgetl.toolchains.tensorrt_engine import (CompileConfig, compile_engine, trtexec_commands, trtexec_notes)
from edgetl.toolchains.trt_settings import EngineSettings, Hardware

ORIN = Hardware(platform="jetson", compute_capability="8.7", dla_cores={"8GB": 1, "16GB": 2})
GPU = Hardware(platform="gpu")
INT8_FILES = {"precision-flags": "model.qdq.onnx", "strongly-typed": "model.qdq.fp16.onnx"}
# every flag trtexec's sampleOptions.cpp accepts that these lines use, per generation (10.3 and 11.1 sources)
TRTEXEC_10 = {"--onnx", "--saveEngine", "--minShapes", "--optShapes", "--maxShapes", "--memPoolSize",
              "--builderOptimizationLevel", "--timingCacheFile", "--useDLACore", "--allowGPUFallback",
              "--hardwareCompatibilityLevel", "--versionCompatible", "--sparsity", "--profilingVerbosity",
              "--exportLayerInfo", "--skipInference", "--int8", "--fp16", "--stronglyTyped"}
TRTEXEC_11 = TRTEXEC_10 - {"--int8", "--fp16"}


def lines(settings: EngineSettings | None = None, precision: str = "int8", hardware: Hardware = ORIN,
          onnx: dict | None = None, engine: str = "model.engine") -> dict[str, list[str]]:
    commands = trtexec_commands(onnx or INT8_FILES, settings or EngineSettings(), precision, "input", (3, 224, 224),
                                hardware, engine)
    return {key: shlex.split(line) for key, line in commands.items()}


# -- trtexec ----------------------------------------------------------------------------------------
def test_default_int8_lines_per_generation():
    commands = trtexec_commands(INT8_FILES, EngineSettings(), "int8", "input", (3, 224, 224), ORIN)
    common = ("--saveEngine=model.engine --minShapes=input:1x3x224x224 --optShapes=input:1x3x224x224 "
              "--maxShapes=input:8x3x224x224 --memPoolSize=workspace:1024M --builderOptimizationLevel=3 "
              "--timingCacheFile=timing.cache --profilingVerbosity=detailed --exportLayerInfo=layers.json "
              "--skipInference")
    assert commands == {"tensorrt-10.3": f"trtexec --onnx=model.qdq.onnx --int8 --fp16 {common}",
                        "tensorrt-11": f"trtexec --onnx=model.qdq.fp16.onnx --stronglyTyped {common}"}


@pytest.mark.parametrize("precision, files, legacy_flags", [
    ("int8", INT8_FILES, ["--int8", "--fp16"]),
    ("fp16", {"precision-flags": "model.fp16.onnx", "strongly-typed": "model.fp16.onnx"}, ["--fp16"]),
    ("fp32", {"precision-flags": "model.onnx", "strongly-typed": "model.onnx"}, []),
])
def test_precision_flags_only_on_the_10_3_line(precision: str, files: dict, legacy_flags: list):
    got = lines(precision=precision, onnx=files)
    assert got["tensorrt-10.3"][1] == f"--onnx={files['precision-flags']}"
    assert [a for a in got["tensorrt-10.3"] if a in ("--int8", "--fp16", "--stronglyTyped")] == legacy_flags
    assert got["tensorrt-11"][1:3] == [f"--onnx={files['strongly-typed']}", "--stronglyTyped"]
    assert not {"--int8", "--fp16", "--best"} & set(got["tensorrt-11"])


def test_every_flag_is_one_trtexec_accepts():
    settings = EngineSettings(dla_core=0, hardware_compatibility="none", version_compatible=True,
                              sparse_weights=True)
    for key, known in (("tensorrt-10.3", TRTEXEC_10), ("tensorrt-11", TRTEXEC_11)):
        for arg in lines(settings)[key][1:]:
            assert arg.split("=")[0] in known, (key, arg)
    for key, known in (("tensorrt-10.3", TRTEXEC_10), ("tensorrt-11", TRTEXEC_11)):
        for arg in lines(EngineSettings(hardware_compatibility="ampere+"), hardware=GPU)[key][1:]:
            assert arg.split("=")[0] in known, (key, arg)


def test_builder_settings_become_flags():
    settings = EngineSettings(min_batch=2, opt_batch=4, max_batch=32, workspace_mib=2048, optimization_level=5,
                              timing_cache="cache/trt.cache", version_compatible=True, sparse_weights=True)
    for args in lines(settings, hardware=GPU).values():
        assert {"--minShapes=input:2x3x224x224", "--optShapes=input:4x3x224x224", "--maxShapes=input:32x3x224x224",
                "--memPoolSize=workspace:2048M", "--builderOptimizationLevel=5", "--timingCacheFile=cache/trt.cache",
                "--versionCompatible", "--sparsity=enable"} <= set(args)
        assert not any(a.startswith(("--useDLACore", "--allowGPUFallback", "--hardwareCompatibilityLevel"))
                       for a in args)


def test_dla_lines_are_static_with_gpu_fallback_and_noted_for_tensorrt_11():
    settings = EngineSettings(dla_core=1, opt_batch=2, max_batch=8)
    for args in lines(settings).values():
        assert {"--useDLACore=1", "--allowGPUFallback", "--minShapes=input:2x3x224x224",
                "--maxShapes=input:2x3x224x224"} <= set(args)
    notes = trtexec_notes(INT8_FILES, settings, "int8")
    assert any(n.startswith("tensorrt-11 --useDLACore: TensorRT 11.0-11.4.0 have no DLA on Jetson") for n in notes)
    assert any("DLA has no dynamic shapes: both lines build batch 2 only (not 1..8)" in n for n in notes)
    no_fallback = lines(EngineSettings(dla_core=0, gpu_fallback=False))
    assert all("--allowGPUFallback" not in args for args in no_fallback.values())
    assert "DLA runs FP16 and INT8 only" in " ".join(trtexec_notes({"precision-flags": "model.onnx"},
                                                                   EngineSettings(dla_core=0), "fp32"))
    assert trtexec_notes(INT8_FILES, EngineSettings(), "int8") == []


def test_hardware_compatibility_levels():
    ampere = lines(EngineSettings(hardware_compatibility="ampere+"), hardware=GPU)
    assert all("--hardwareCompatibilityLevel=ampere+" in args for args in ampere.values())
    same = lines(EngineSettings(hardware_compatibility="same-compute-capability"), hardware=GPU)
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in same["tensorrt-11"]
    assert not any(a.startswith("--hardwareCompatibilityLevel") for a in same["tensorrt-10.3"])  # needs >= 10.9
    assert "needs TensorRT >= 10.9" in " ".join(
        trtexec_notes(INT8_FILES, EngineSettings(hardware_compatibility="same-compute-capability"), "int8"))
    with pytest.raises(TargetError, match="no hardware-compatible engines on Jetson"):
        lines(EngineSettings(hardware_compatibility="ampere+"), hardware=ORIN)
    with pytest.raises(TargetError, match=r"needs a GPU of compute capability >= 8\.0 to build on, this one is 7\.5"):
        lines(EngineSettings(hardware_compatibility="ampere+"), hardware=Hardware(platform="gpu",
                                                                                 compute_capability="7.5"))


def test_paths_are_shell_quoted():
    files = {"precision-flags": "my model.qdq.onnx", "strongly-typed": "it's fp16.onnx"}
    settings = EngineSettings(timing_cache="timing cache.bin")
    commands = trtexec_commands(files, settings, "int8", "input", (3, 8, 8), ORIN, "out dir/fast.engine")
    assert "'--onnx=my model.qdq.onnx'" in commands["tensorrt-10.3"]
    for args in (shlex.split(line) for line in commands.values()):
        assert {"--saveEngine=out dir/fast.engine", "--timingCacheFile=timing cache.bin",
                "--exportLayerInfo=fast.layers.json"} <= set(args)
    assert shlex.split(commands["tensorrt-11"])[1] == "--onnx=it's fp16.onnx"


def test_int8_without_an_fp16_twin_is_noted():
    notes = trtexec_notes({"precision-flags": "model.qdq.onnx"}, EngineSettings(), "int8")
    assert notes == ["tensorrt-11 builds the FP32 Q/DQ ONNX strongly typed: its unquantized layers run in FP32"]
    assert lines(onnx={"precision-flags": "model.qdq.onnx"})["tensorrt-11"][1] == "--onnx=model.qdq.onnx"
    with pytest.raises(ConfigError, match="needs the ONNX file names"):
        trtexec_commands({}, EngineSettings(), "int8", "input", (3, 8, 8), ORIN)


# -- a fake TensorRT ---------------------------------------------------------------------------------
LAYER_INFO = {"Layers": [  # what the engine inspector says, detailed (first input's format gives the precision)
    {"Name": "reformat", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
    {"Name": "conv1", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "Row major Int8 format"}]},
    {"Name": "conv2", "LayerType": "CaskConvolution",
     "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
    {"Name": "fc", "LayerType": "CaskGemm",
     "Inputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]}],
    "Bindings": ["input", "logits"]}
CONFIG_FIELDS = {"builder_optimization_level": "level", "hardware_compatibility_level": "hw_level",
                 "profiling_verbosity": "verbosity", "default_device_type": "device_type", "DLA_core": "dla_core"}


class _Config:
    """IBuilderConfig: records flags and settings in the fake module's ``rec``."""

    def __init__(self, trt):
        object.__setattr__(self, "trt", trt)

    def __setattr__(self, name, value):
        setattr(self.trt.rec, CONFIG_FIELDS[name], value) if name in CONFIG_FIELDS else object.__setattr__(
            self, name, value)

    def set_flag(self, flag):
        self.trt.rec.flags.add(flag)

    def add_optimization_profile(self, profile):
        self.trt.rec.shapes = profile.shapes

    def set_memory_pool_limit(self, pool, size):
        self.trt.rec.pool = (pool, size)

    def create_timing_cache(self, data):
        self.trt.rec.cache_in.append(bytes(data))
        return SimpleNamespace(data=bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        self.cache = cache
        return not (self.trt.cache_mismatch and cache.data)

    def get_timing_cache(self):
        return SimpleNamespace(serialize=lambda: self.cache.data + b"+tuned")

    def can_run_on_DLA(self, layer):
        assert self.trt.rec.device_type == "DLA"
        return layer.name != "topk"


class _Builder:
    def __init__(self, trt):
        self.trt, self.num_DLA_cores = trt, trt.dla_cores

    def create_network(self, flags):
        self.trt.rec.network_flags = flags
        layers = [SimpleNamespace(name=n) for n in ("conv1", "relu1", "topk")]
        return SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(name="input", shape=(-1, 3, 8, 8)),
                               num_layers=len(layers), get_layer=layers.__getitem__)

    def create_builder_config(self):
        return _Config(self.trt)

    def create_optimization_profile(self):
        profile = SimpleNamespace(shapes=None)
        profile.set_shape = lambda name, lo, opt, hi: setattr(profile, "shapes", (name, lo, opt, hi))
        return profile

    def build_serialized_network(self, network, config):
        rec = self.trt.rec
        return None if self.trt.build_fails else f"PLAN {sorted(rec.flags)} {rec.shapes}".encode()


class fake_trt:  # noqa: N801 (stands for the module)
    """The ``tensorrt`` names compile_engine uses, as the given version has them; ``rec`` records the calls."""

    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    def __init__(self, version: str = "10.3.0.30", *, dla_cores: int = 0, parse_errors: tuple = (),
                 build_fails: bool = False, cache_mismatch: bool = False):
        v = version_tuple(version)
        self.__version__, self.dla_cores, self.parse_errors = version, dla_cores, parse_errors
        self.build_fails, self.cache_mismatch = build_fails, cache_mismatch
        self.rec = SimpleNamespace(network_flags=None, flags=set(), shapes=None, pool=None, level=None, cache_in=[],
                                   hw_level=None, verbosity=None, device_type=None, dla_core=None, runtimes=[],
                                   parsed=None)
        flags = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "SPARSE_WEIGHTS"] + (["INT8", "FP16"] if v < (11,) else [])
        levels = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if v >= (10, 9) else [])
        self.BuilderFlag = SimpleNamespace(**{f: f for f in flags})  # INT8 / FP16 are gone in TensorRT 11
        self.HardwareCompatibilityLevel = SimpleNamespace(**{x: x for x in levels})  # same-cc from 10.9
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0 if v >= (11,) else 1)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.DeviceType = SimpleNamespace(GPU="GPU", DLA="DLA")
        self.ProfilingVerbosity = SimpleNamespace(DETAILED="DETAILED")
        self.LayerInformationFormat = SimpleNamespace(JSON="JSON")

    def Builder(self, logger):  # noqa: N802
        return _Builder(self)

    def OnnxParser(self, network, logger):  # noqa: N802
        def parse_from_file(path):
            self.rec.parsed = Path(path).name
            return not self.parse_errors

        return SimpleNamespace(num_errors=len(self.parse_errors), parse_from_file=parse_from_file,
                               get_error=self.parse_errors.__getitem__)

    def Runtime(self, logger):  # noqa: N802
        inspector = SimpleNamespace(get_engine_information=lambda fmt: json.dumps(LAYER_INFO))
        engine = SimpleNamespace(create_engine_inspector=lambda: inspector)
        runtime = SimpleNamespace(engine_host_code_allowed=False, DLA_core=-1, deserialize_cuda_engine=lambda p: engine)
        self.rec.runtimes.append(runtime)
        return runtime


@pytest.fixture
def device(monkeypatch):
    """A Jetson Orin NX with TensorRT 10.3 (fake); set ``.trt``, ``.gpus`` or ``.platform`` to change it."""
    state = SimpleNamespace(trt=fake_trt(), gpus=[_cuda.Device(0, "Orin", "8.7", 15000)], platform="jetson",
                            set_device=[])
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: state.trt)
    monkeypatch.setattr(_cuda, "devices", lambda: state.gpus)
    monkeypatch.setattr(_cuda, "platform_name", lambda: state.platform)
    monkeypatch.setattr(_cuda, "set_device", state.set_device.append)
    monkeypatch.setattr(_cuda, "jetson_release", lambda: {"l4t": "36.4.3", "jetpack": "6.2", "module": "Orin NX"}
                        if state.platform == "jetson" else {})
    monkeypatch.setattr(_cuda, "driver_cuda_version", lambda: "12.6")
    monkeypatch.setattr(_cuda, "kernel_driver_version", lambda: "540.4.0")
    return state


ONNX_FILES = {"int8": ("model.qdq.onnx", "model.qdq.fp16.onnx"), "fp16": ("model.fp16.onnx",), "fp32": ("model.onnx",)}


def make_export(folder: Path, precision: str = "int8", target: str = "jetson", **engine) -> Path:
    """RUN/TARGET/PRECISION as `edgetl export --target jetson` writes it (fake ONNX bytes: TensorRT is fake)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ONNX_FILES[precision]
    for name in names:
        (folder / name).write_bytes(f"onnx {name}".encode())
    block = {"precision": precision, "engine": EngineSettings(**engine).to_dict(),
             "hardware": {"platform": "jetson", "compute_capability": "8.7", "dla_cores": {}, "tensorrt": {}},
             "input": {"name": "input", "shape": [3, 8, 8]},
             "onnx": {"precision-flags": names[0], "strongly-typed": names[-1]},
             "sha256": {n: sha256(folder / n) for n in names}, "trtexec": {}}
    write_json(folder / "build.json", {"target": {"name": target}, "precision": precision, "tensorrt": block})
    return folder


def make_run(root: Path, exports=(("jetson", "int8"),), **engine) -> Path:
    run = root / "run"
    manifest = Manifest.create(run, model={"name": "m"}, classes=["a", "b"], preprocessing={"input_size": 8})
    manifest.save()
    for target, precision in exports:
        with stage(manifest, f"{target}:{precision}", {"target": target}, []) as st:
            folder = make_export(run / target / precision, precision, target, **engine)
            if target == "intel-cpu":  # an OpenVINO export: build.json without a tensorrt block
                write_json(folder / "build.json", {"target": {"name": target}, "toolchain": "openvino"})
            for file in sorted(folder.iterdir()):
                st.artifact(file)
    return run


# -- compile_engine -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version, typed, onnx, network_flags, flags", [
    ("10.3.0.30", False, "model.qdq.onnx", 0, {"INT8", "FP16"}),
    ("10.12.0.36", True, "model.qdq.fp16.onnx", 1 << 1, set()),
    ("11.4.0.106", True, "model.qdq.fp16.onnx", 0, set()),  # 11: strong typing always on, no flag at all
])
def test_typing_and_precision_flags_follow_the_tensorrt_version(tmp_path, device, version, typed, onnx,
                                                                network_flags, flags):
    device.trt = fake_trt(version)
    result = compile_engine(make_export(tmp_path / "jetson" / "int8"))
    rec = device.trt.rec
    assert result.strongly_typed is typed and result.onnx.name == onnx and rec.parsed == onnx
    assert rec.network_flags == network_flags and rec.flags == flags
    assert rec.verbosity == "DETAILED" and result.fingerprint["strongly_typed"] is typed
    for precision, legacy_flags in (("fp16", {"FP16"}), ("fp32", set())):  # the float exports: one file each
        device.trt = fake_trt(version)
        result = compile_engine(make_export(tmp_path / precision, precision))
        assert device.trt.rec.flags == (set() if typed else legacy_flags)
        assert result.onnx.name == ONNX_FILES[precision][0]


def test_typing_can_be_forced_except_on_tensorrt_11(tmp_path, device, caplog):
    folder = make_export(tmp_path / "int8")
    assert compile_engine(folder, CompileConfig(strongly_typed=True)).onnx.name == "model.qdq.fp16.onnx"
    assert device.trt.rec.flags == set() and device.trt.rec.network_flags == 2
    device.trt = fake_trt("10.13.0")
    with caplog.at_level(logging.WARNING):
        compile_engine(folder, CompileConfig(strongly_typed=False))
    assert device.trt.rec.flags == {"INT8", "FP16"} and "deprecates the precision flags" in caplog.text
    device.trt = fake_trt("11.4.0")
    with pytest.raises(ConfigError, match="TensorRT 11 builds strongly typed networks only"):
        compile_engine(folder, CompileConfig(strongly_typed=False))


def test_profile_workspace_and_level_come_from_build_json_and_overrides(tmp_path, device):
    folder = make_export(tmp_path / "int8", min_batch=1, opt_batch=2, max_batch=8, workspace_mib=512,
                         optimization_level=4)
    result = compile_engine(folder)
    rec = device.trt.rec
    assert rec.shapes == ("input", (1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))
    assert rec.pool == ("WORKSPACE", 512 << 20) and rec.level == 4
    assert result.fingerprint["profile"] == {"input": "input", "min": [1, 3, 8, 8], "opt": [2, 3, 8, 8],
                                             "max": [8, 3, 8, 8]}
    compile_engine(folder, CompileConfig(max_batch=16, workspace_mib=2048, optimization_level=5))
    assert rec.shapes[3] == (16, 3, 8, 8) and rec.pool == ("WORKSPACE", 2048 << 20) and rec.level == 5
    with pytest.raises(ConfigError, match="min_batch <= opt_batch <= max_batch"):
        compile_engine(folder, CompileConfig(max_batch=1))


def test_timing_cache_is_saved_then_reused(tmp_path, device, caplog):
    folder = make_export(tmp_path / "int8")
    compile_engine(folder)
    assert device.trt.rec.cache_in == [b""]
    assert (folder / "timing.cache").read_bytes() == b"+tuned"
    compile_engine(folder)
    assert device.trt.rec.cache_in == [b"", b"+tuned"]
    assert (folder / "timing.cache").read_bytes() == b"+tuned+tuned"
    device.trt = fake_trt(cache_mismatch=True)  # a cache from another GPU / TensorRT: start over
    with caplog.at_level(logging.WARNING):
        compile_engine(folder)
    assert device.trt.rec.cache_in == [b"+tuned+tuned", b""] and "starting a new one" in caplog.text


def test_dla_build_with_fallback_report(tmp_path, device):
    device.trt = fake_trt(dla_cores=2)
    result = compile_engine(make_export(tmp_path / "int8", max_batch=8, opt_batch=2), CompileConfig(dla_core=1))
    rec = device.trt.rec
    assert rec.device_type == "DLA" and rec.dla_core == 1 and "GPU_FALLBACK" in rec.flags
    assert result.device == "DLA:1" and result.gpu_fallback_layers == ["topk"]
    assert result.fingerprint["gpu_fallback_layers"] == ["topk"] and result.fingerprint["dla_core"] == 1
    assert rec.shapes == ("input", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))  # DLA: static shapes
    assert rec.runtimes[-1].DLA_core == 1  # the layer report loads it on the same core


def test_dla_core_beyond_the_device_or_without_fallback_is_refused(tmp_path, device):
    folder = make_export(tmp_path / "int8", dla_core=1)
    device.trt = fake_trt(dla_cores=1)
    with pytest.raises(TargetError, match=r"DLA core 1 was asked for, but TensorRT 10\.3\.0\.30 sees DLA cores 0\.\.0"):
        compile_engine(folder)
    device.trt = fake_trt("11.1.0", dla_cores=0)
    with pytest.raises(TargetError, match="sees no DLA core on this device"):
        compile_engine(folder)
    device.trt = fake_trt(dla_cores=2)
    with pytest.raises(ConfigError, match=r"1 layers cannot run on DLA \(first: topk\) and GPU fallback is off"):
        compile_engine(make_export(tmp_path / "nofallback", dla_core=0, gpu_fallback=False))
    assert not (folder / "model.engine").exists() and not (tmp_path / "nofallback" / "model.engine").exists()
    assert compile_engine(folder, CompileConfig(no_dla=True)).device == "GPU"


def test_hardware_compatibility(tmp_path, device):
    folder = make_export(tmp_path / "int8")
    with pytest.raises(TargetError, match="no hardware-compatible engines on Jetson"):
        compile_engine(folder, CompileConfig(hardware_compatibility="ampere+"))
    device.platform = "gpu"
    device.gpus = [_cuda.Device(0, "Tesla T4", "7.5")]
    with pytest.raises(TargetError, match=r"needs a GPU of compute capability >= 8\.0 to build on, this one is 7\.5"):
        compile_engine(folder, CompileConfig(hardware_compatibility="ampere+"))
    device.gpus = [_cuda.Device(0, "RTX 3090", "8.6")]
    result = compile_engine(folder, CompileConfig(hardware_compatibility="ampere+"))
    assert device.trt.rec.hw_level == "AMPERE_PLUS" and result.fingerprint["hardware_compatibility"] == "ampere+"
    with pytest.raises(ConfigError, match="same-compute-capability needs TensorRT >= 10.9"):
        compile_engine(folder, CompileConfig(hardware_compatibility="same-compute-capability"))
    device.trt = fake_trt("10.9.0")
    compile_engine(folder, CompileConfig(hardware_compatibility="same-compute-capability"))
    assert device.trt.rec.hw_level == "SAME_COMPUTE_CAPABILITY"


def test_version_compatible_and_sparse_weights(tmp_path, device):
    result = compile_engine(make_export(tmp_path / "int8"), CompileConfig(version_compatible=True,
                                                                          sparse_weights=True))
    assert {"VERSION_COMPATIBLE", "SPARSE_WEIGHTS"} <= device.trt.rec.flags
    assert device.trt.rec.runtimes[-1].engine_host_code_allowed  # the layer report loads the lean-runtime plan
    assert result.fingerprint["version_compatible"] is True


def test_engine_is_raw_and_its_fingerprint_ties_to_it(tmp_path, device):
    folder = make_export(tmp_path / "jetson" / "int8")
    result = compile_engine(folder)
    plan = (folder / "model.engine").read_bytes()
    assert plan.startswith(b"PLAN ") and result.engine == folder / "model.engine"  # no header in front
    sidecar = json.loads((folder / "model.engine.json").read_text())
    assert result.sidecar == folder / "model.engine.json" and sidecar == result.fingerprint
    assert sidecar["engine_sha256"] == sha256(folder / "model.engine") and sidecar["engine_bytes"] == len(plan)
    assert sidecar["source"] == {"onnx": "model.qdq.onnx", "sha256": sha256(folder / "model.qdq.onnx")}
    assert sidecar["layer_precisions"] == {"int8": 2, "fp16": 1}  # the Reformat layer is not counted
    assert sidecar["executed_precision"] == result.executed_precision == "int8+fp16"
    assert {k: sidecar[k] for k in ("tensorrt_version", "gpu", "compute_capability", "platform", "l4t", "jetpack",
                                    "cuda_driver", "driver", "device", "precision")} == {
        "tensorrt_version": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7", "platform": "jetson",
        "l4t": "36.4.3", "jetpack": "6.2", "cuda_driver": "12.6", "driver": "540.4.0", "device": "GPU",
        "precision": "int8"}
    assert sidecar["engine_settings"] == EngineSettings().to_dict() and sidecar["build_s"] >= 0
    assert json.loads((folder / "layers.json").read_text())["Layers"][1]["Name"] == "conv1"
    # the runner accepts what compile wrote, on the same device
    trt_backend.check_sidecar(result.engine, trt_backend.read_sidecar(result.engine),
                              engine_sha256=hashlib.sha256(plan).hexdigest(),
                              tensorrt_version="10.3.0.30", compute_capability="8.7", platform="jetson")


@pytest.mark.parametrize("fake, error, message", [
    ({"build_fails": True}, ModelError, r"could not build an engine from model\.qdq\.onnx: see TensorRT's messages"),
    ({"parse_errors": ("Unsupported ONNX op Foo\ndetail", "second")}, ModelError,
     r"ONNX parser rejected .*model\.qdq\.onnx: Unsupported ONNX op Foo \(and 1 more, logged above\)$"),
])
def test_a_failing_build_leaves_no_engine_and_no_fingerprint(tmp_path, device, fake, error, message):
    folder = make_export(tmp_path / "int8")
    device.trt = fake_trt(**fake)
    with pytest.raises(error, match=message):
        compile_engine(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["build.json", "model.qdq.fp16.onnx", "model.qdq.onnx"]


def test_from_a_run_records_the_engine_stage(tmp_path, device):
    run = make_run(tmp_path)
    result = compile_engine(run)
    assert result.stage == "jetson:int8:engine" and result.engine == run / "jetson" / "int8" / "model.engine"
    record = Manifest.load(run).stage("jetson:int8:engine")
    assert record["status"] == "complete" and record["inputs"] == {
        "jetson/int8/model.qdq.onnx": sha256(run / "jetson" / "int8" / "model.qdq.onnx")}
    engine = record["artifacts"]["jetson/int8/model.engine"]
    assert {k: engine[k] for k in ("runtime", "precision", "format", "device", "executed_precision")} == {
        "runtime": "tensorrt", "precision": "int8", "format": "tensorrt-plan", "device": "GPU",
        "executed_precision": "int8+fp16"}
    assert engine["sha256"] == sha256(result.engine)
    assert set(record["artifacts"]) == {"jetson/int8/model.engine", "jetson/int8/model.engine.json",
                                        "jetson/int8/layers.json"}
    assert record["metrics"]["layer_precisions"] == {"int8": 2, "fp16": 1}
    assert Manifest.load(run).verify() == []


def test_a_failing_build_from_a_run_is_recorded_failed(tmp_path, device):
    run = make_run(tmp_path)
    device.trt = fake_trt(build_fails=True)
    with pytest.raises(ModelError, match="could not build"):
        compile_engine(run)
    record = Manifest.load(run).stage("jetson:int8:engine")
    assert record["status"] == "failed" and "could not build" in record["error"]
    assert not (run / "jetson" / "int8" / "model.engine").exists()


def test_an_artifact_folder_alone_is_enough(tmp_path, device):
    """What is copied to a Jetson: the ONNX files and build.json, no run folder around them."""
    run = make_run(tmp_path)
    copy = shutil.copytree(run / "jetson" / "int8", tmp_path / "on-the-jetson")
    result = compile_engine(copy, CompileConfig(output=str(tmp_path / "out" / "fast.engine")))
    assert result.stage is None and result.engine.read_bytes().startswith(b"PLAN")
    assert (tmp_path / "out" / "fast.engine.json").is_file() and (tmp_path / "out" / "fast.layers.json").is_file()
    assert (copy / "timing.cache").is_file()  # the cache stays with the export
    assert "jetson:int8:engine" not in Manifest.load(run).stages


def test_a_changed_onnx_is_refused(tmp_path, device):
    folder = make_export(tmp_path / "int8")
    (folder / "model.qdq.onnx").write_bytes(b"truncated")
    with pytest.raises(IntegrityError, match=r"model\.qdq\.onnx does not match the sha256 its export recorded"):
        compile_engine(folder)
    device.trt = fake_trt("10.12.0")  # strongly typed: the other file, which is intact
    assert compile_engine(folder).onnx.name == "model.qdq.fp16.onnx"
    (folder / "model.qdq.fp16.onnx").unlink()
    with pytest.raises(RunFolderError, match=r"model\.qdq\.fp16\.onnx is missing: copy the whole artifact folder"):
        compile_engine(folder)


def test_no_verify_builds_an_edited_onnx_of_a_run_and_records_its_bytes(tmp_path, device):
    run = make_run(tmp_path)
    onnx = run / "jetson" / "int8" / "model.qdq.onnx"
    onnx.write_bytes(onnx.read_bytes() + b" ")  # edited on purpose
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        compile_engine(run)
    result = CliRunner().invoke(cli, ["compile", str(run), "--no-verify"])
    assert result.exit_code == 0, result.output
    record = Manifest.load(run).stage("jetson:int8:engine")
    assert record["inputs"] == {"jetson/int8/model.qdq.onnx": sha256(onnx)}


def test_without_tensorrt_or_gpu_says_where_compile_runs(tmp_path, device, monkeypatch):
    folder = make_export(tmp_path / "int8")

    def missing():
        raise MissingBackendError("tensorrt", "tensorrt", "TensorRT engines", required="10.0")

    monkeypatch.setattr(trt_backend, "import_tensorrt", missing)
    with pytest.raises(MissingBackendError) as info:
        compile_engine(folder)
    text = str(info.value)
    assert "\n" not in text and "pip install 'edgetl[tensorrt]'" in text and "sudo apt install nvidia-jetpack" in text
    assert "`edgetl compile` runs on the device that will run the engine" in text and f"copy {folder} there" in text
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: device.trt)
    device.gpus = []
    with pytest.raises(TargetError, match=rf"no NVIDIA GPU is visible here: .*copy {folder} \(its ONNX files"):
        compile_engine(folder)
    device.gpus = [_cuda.Device(0, "A", "8.6"), _cuda.Device(1, "B", "8.9")]
    device.platform = "gpu"
    assert compile_engine(folder, CompileConfig(device=1)).fingerprint["gpu"] == "B" and device.set_device == [1]
    run = make_run(tmp_path / "multi")
    compile_engine(run, CompileConfig(device=1))
    assert Manifest.load(run).stage("jetson:int8:engine")["artifacts"]["jetson/int8/model.engine"]["device"] == "GPU.1"


def test_which_export_a_run_compiles(tmp_path, device):
    run = make_run(tmp_path, exports=(("jetson", "fp16"), ("jetson", "int8"), ("intel-cpu", "int8")))
    assert compile_engine(run).precision == "int8"  # the int8 export when none is named
    assert compile_engine(run, CompileConfig(precision="fp16")).engine.parent.name == "fp16"
    with pytest.raises(TargetError, match=r"has no jetson fp32 TensorRT export \(built: fp16, int8\): run `edgetl "
                                          r"export .* --target jetson --precision fp32` first"):
        compile_engine(run, CompileConfig(precision="fp32"))
    two = make_run(tmp_path / "two", exports=(("jetson", "fp16"), ("jetson", "fp32")))
    with pytest.raises(ConfigError, match="has jetson TensorRT exports in fp16, fp32: choose one with --precision"):
        compile_engine(two)
    many = make_run(tmp_path / "many", exports=(("jetson", "int8"), ("nvidia-gpu", "int8")))
    with pytest.raises(ConfigError, match="exports for jetson, nvidia-gpu: choose one with --target"):
        compile_engine(many)
    assert compile_engine(many, CompileConfig(target="nvidia-gpu")).stage == "nvidia-gpu:int8:engine"


def test_sources_that_are_not_exports(tmp_path, device):
    with pytest.raises(RunFolderError, match="neither a run folder .* nor an exported artifact folder"):
        compile_engine(tmp_path)
    empty = make_run(tmp_path / "empty", exports=())
    with pytest.raises(RunFolderError, match=r"has no TensorRT export: run `edgetl export .* --target jetson` first"):
        compile_engine(empty)
    folder = make_export(tmp_path / "int8")
    with pytest.raises(ConfigError, match="holds the int8 precision export, not fp16"):
        compile_engine(folder, CompileConfig(precision="fp16"))
    write_json(tmp_path / "ov" / "build.json", {"toolchain": "openvino"})
    with pytest.raises(RunFolderError, match="is not a TensorRT export"):
        compile_engine(tmp_path / "ov")
    run = make_run(tmp_path / "r")
    with pytest.raises(ConfigError, match="is outside the run folder"):
        compile_engine(run, CompileConfig(output=str(tmp_path / "elsewhere.engine")))


def test_compile_config_checks_and_cli_options():
    import click
    from click.testing import CliRunner

    from edgetl.config import build, options_from

    with pytest.raises(ConfigError, match="contradict"):
        CompileConfig(dla_core=0, no_dla=True)
    with pytest.raises(ConfigError, match="precision must be one of"):
        CompileConfig(precision="int4")
    seen = {}

    @click.command()
    @options_from(CompileConfig)
    def cli(values, given):
        seen["config"] = build(CompileConfig, values)

    result = CliRunner().invoke(cli, ["--max-batch", "4", "--no-dla", "--hardware-compatibility", "ampere+",
                                      "--version-compatible", "--precision", "int8"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.max_batch, config.no_dla, config.hardware_compatibility, config.version_compatible,
            config.strongly_typed, config.min_batch) == (4, True, "ampere+", True, None, None)
    assert CliRunner().invoke(cli, ["--hardware-compatibility", "turing"]).exit_code != 0


# -- on a device ------------------------------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_compile_and_run_matches_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    if not _cuda.devices():
        pytest.skip("no NVIDIA GPU")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.backends import create_runner

    rng = np.random.default_rng(0)
    weight, fc = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(fc, "fc")])
    folder = tmp_path / "nvidia-gpu" / "fp32"
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    block = {"precision": "fp32", "engine": EngineSettings(max_batch=4).to_dict(), "hardware": {},
             "input": {"name": "input", "shape": [3, 8, 8]},
             "onnx": {"precision-flags": "model.onnx", "strongly-typed": "model.onnx"},
             "sha256": {"model.onnx": sha256(folder / "model.onnx")}}
    write_json(folder / "build.json", {"target": {"name": "nvidia-gpu"}, "tensorrt": block})
    result = compile_engine(folder)
    batch = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    reference = create_runner("onnxruntime", folder / "model.onnx").infer(batch)
    with create_runner("tensorrt", result.engine) as runner:
        out = runner.infer(batch)
        info = runner.describe()
    np.testing.assert_allclose(out, reference, atol=2e-2, rtol=2e-2)  # TF32 may be on
    assert info.precision == result.executed_precision and "fp32" in info.precision
