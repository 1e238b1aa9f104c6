"""The TensorRT runner without TensorRT or a GPU: the fingerprint it requires beside an engine, the refusal of
an engine built for another TensorRT / GPU / platform before it is deserialised, and inference through fake
Polygraphy buffers (no torch anywhere)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl._io import sha256
from edgetl.backends import _cuda
from edgetl.backends.tensorrt import TensorRTRunner, check_sidecar, read_sidecar, sidecar_path
from edgetl.errors import EdgetlError, MissingBackendError, ModelError, TargetError

ORIN = _cuda.Device(0, "Orin", "8.7", 15000)


def sidecar_for(engine: Path, **changes) -> dict:
    """A fingerprint as `edgetl compile` writes it for ``engine`` on a Jetson Orin with TensorRT 10.3."""
    data = {"schema": 1, "engine": engine.name, "engine_sha256": sha256(engine), "tensorrt_version": "10.3.0.30",
            "compute_capability": "8.7", "platform": "jetson", "hardware_compatibility": "none",
            "version_compatible": False, "precision": "int8", "executed_precision": "int8+fp16",
            "layer_precisions": {"int8": 40, "fp16": 9}, "dla_core": None}
    data.update(changes)
    return data


def write_engine(folder: Path, sidecar: dict | None = None, **changes) -> Path:
    engine = folder / "model.engine"
    engine.write_bytes(b"serialised engine")
    if sidecar is None:
        sidecar = sidecar_for(engine, **changes)
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return engine


def check(sidecar_changes: dict, tmp_path: Path, trt_version: str = "10.3.0.30", cc: str = "8.7",
          platform: str = "jetson") -> tuple[str, str]:
    """The rules that accepted the engine (TensorRT version, GPU), or the refusal."""
    engine = write_engine(tmp_path, **sidecar_changes)
    return check_sidecar(engine, read_sidecar(engine), engine_sha256=sha256(engine), tensorrt_version=trt_version,
                  compute_capability=cc, platform=platform)


# -- the fingerprint -----------------------------------------------------------------------------------
def test_fingerprint_is_named_after_the_engine(tmp_path: Path):
    assert sidecar_path(tmp_path / "model.engine") == tmp_path / "model.engine.json"
    assert sidecar_path("fast.plan").name == "fast.plan.json"


def test_missing_fingerprint_is_refused_even_with_build_json_beside(tmp_path: Path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    (tmp_path / "build.json").write_text(json.dumps({"tensorrt_version": "10.3.0"}))  # not a fingerprint
    (tmp_path / "model.json").write_text(json.dumps({"tensorrt_version": "10.3.0"}))  # the old name
    with pytest.raises(ModelError, match=r"model\.engine has no build fingerprint model\.engine\.json beside it.*"
                                         r"rebuild it on this device with `edgetl compile "):
        read_sidecar(engine)


@pytest.mark.parametrize("text, reason", [("{ nope", "not valid JSON"), ("[1, 2]", "a JSON list, not an object"),
                                          (json.dumps({"tensorrt_version": "10.3"}), "it lacks engine_sha256, ")])
def test_damaged_fingerprint_is_refused(tmp_path: Path, text: str, reason: str):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    sidecar_path(engine).write_text(text)
    with pytest.raises(ModelError, match=rf"model\.engine\.json is damaged \({reason}.*edgetl compile {tmp_path}`$"):
        read_sidecar(engine)


def test_fingerprint_of_another_engine_is_refused(tmp_path: Path):
    with pytest.raises(ModelError, match=r"model\.engine\.json describes another engine \(its sha256 is not that of "
                                         r"model\.engine\): rebuild it on this device"):
        check({"engine_sha256": "0" * 64}, tmp_path)


# -- TensorRT version -----------------------------------------------------------------------------------
@pytest.mark.parametrize("built, here", [("10.3.0.30", "10.3.0.30"), ("10.3.0.26", "10.3.1"), ("10.3", "10.3.0.26")])
def test_same_major_minor_tensorrt_is_accepted(tmp_path: Path, built: str, here: str):
    assert check({"tensorrt_version": built}, tmp_path, trt_version=here) == ("same-minor", "same-sm")
    # a version-compatible engine of the same minor is accepted by the same-minor rule, not the newer-version one
    assert check({"tensorrt_version": built, "version_compatible": True}, tmp_path, trt_version=here)[0] == "same-minor"


@pytest.mark.parametrize("built, here", [("10.2.0", "10.3.0"), ("8.6.1", "10.3.0"), ("10.13.0", "10.1.3")])
def test_other_tensorrt_version_is_refused(tmp_path: Path, built: str, here: str):
    with pytest.raises(TargetError, match=rf"model\.engine was built with TensorRT {built}, this machine has {here}: "
                                          r"rebuild it on this device with `edgetl compile "):
        check({"tensorrt_version": built}, tmp_path, trt_version=here)


@pytest.mark.parametrize("here", ["10.12.0", "10.3.2", "10.16.1"])
def test_version_compatible_engine_runs_on_a_newer_tensorrt(tmp_path: Path, here: str):
    verdict = check({"tensorrt_version": "10.3.0", "version_compatible": True}, tmp_path, trt_version=here)
    assert verdict == ("same-minor" if here.startswith("10.3.") else "version-compatible", "same-sm")


@pytest.mark.parametrize("here", ["10.2.0", "11.4.0"])
def test_version_compatible_engine_is_refused_on_older_or_other_major(tmp_path: Path, here: str):
    with pytest.raises(TargetError, match=r"a version-compatible engine runs only on a newer TensorRT of the same "
                                          r"major version\): rebuild"):
        check({"tensorrt_version": "10.3.0", "version_compatible": True}, tmp_path, trt_version=here)


# -- GPU and platform -----------------------------------------------------------------------------------
def test_other_compute_capability_is_refused(tmp_path: Path):
    with pytest.raises(TargetError, match=r"model\.engine was built for compute capability 8\.6, this GPU is 8\.7: "
                                          r"rebuild it on this device"):
        check({"compute_capability": "8.6"}, tmp_path, cc="8.7")
    verdict = check({"compute_capability": 8.9, "platform": "gpu"}, tmp_path, cc="8.9", platform="gpu")  # a JSON number
    assert verdict == ("same-minor", "same-sm")


def test_ampere_plus_engine_runs_on_any_ampere_or_newer_gpu(tmp_path: Path):
    for cc in ("8.0", "8.9", "9.0", "12.0"):
        verdict = check({"compute_capability": "8.6", "hardware_compatibility": "ampere+", "platform": "gpu"},
                        tmp_path, cc=cc, platform="gpu")
        assert verdict == ("same-minor", "ampere+"), cc


def test_ampere_plus_engine_is_refused_on_turing(tmp_path: Path):
    with pytest.raises(TargetError, match=r"is hardware-compatible with Ampere and newer GPUs \(sm >= 8\.0\), this "
                                          r"GPU is sm 7\.5: rebuild"):
        check({"compute_capability": "8.6", "hardware_compatibility": "ampere+", "platform": "gpu"}, tmp_path,
              cc="7.5", platform="gpu")


def test_same_compute_capability_level_still_needs_the_same_sm(tmp_path: Path):
    changes = {"compute_capability": "8.6", "hardware_compatibility": "same-compute-capability", "platform": "gpu"}
    assert check(changes, tmp_path, cc="8.6", platform="gpu") == ("same-minor", "same-sm")
    with pytest.raises(TargetError, match="built for compute capability 8.6, this GPU is 8.9"):
        check(changes, tmp_path, cc="8.9", platform="gpu")


def test_engine_of_the_other_platform_is_refused(tmp_path: Path):
    with pytest.raises(TargetError, match=r"was built on a Jetson \(L4T\), this machine is a discrete-GPU machine"):
        check({}, tmp_path, platform="gpu")


# -- load(): refuse before deserialising ---------------------------------------------------------------
def fake_trt(version: str = "10.3.0.30", deserialised: list | None = None, engine=None) -> SimpleNamespace:
    """The parts of ``tensorrt`` the runner touches; ``deserialize_cuda_engine`` records what it is given."""
    runtimes = []

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False
            self.DLA_core = -1
            runtimes.append(self)

        def deserialize_cuda_engine(self, data: bytes):
            if deserialised is not None:
                deserialised.append(data)
            return engine  # None: what TensorRT returns for an engine it cannot load

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            pass

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, runtimes=runtimes,
                           TensorIOMode=SimpleNamespace(INPUT="input", OUTPUT="output"),
                           DataType=SimpleNamespace(FLOAT="float", HALF="half", INT8="int8", INT32="int32",
                                                    BOOL="bool"))


@pytest.fixture
def gpu_here(monkeypatch):
    """One Orin GPU (sm 8.7) on a Jetson; TensorRT is a fake recording what it is asked to deserialise."""
    import edgetl.backends.tensorrt as module

    state = SimpleNamespace(deserialised=[], trt=None, devices=[ORIN], cuda=FakeCuda())
    state.trt = fake_trt("10.3.0.30", state.deserialised)
    monkeypatch.setattr(module, "import_tensorrt", lambda: state.trt)
    monkeypatch.setattr(_cuda, "devices", lambda: state.devices)
    monkeypatch.setattr(_cuda, "platform_name", lambda: "jetson")
    monkeypatch.setattr(_cuda, "set_device", lambda index: None)
    monkeypatch.setattr(_cuda, "polygraphy_cuda", lambda: state.cuda)
    monkeypatch.setattr(_cuda, "kernel_driver_version", lambda: "540.4.0")
    monkeypatch.setattr(_cuda, "driver_cuda_version", lambda: "12.6")
    return state


@pytest.mark.parametrize("changes, error, message", [
    (None, ModelError, "has no build fingerprint"),
    ({"engine_sha256": "f" * 64}, ModelError, "describes another engine"),
    ({"tensorrt_version": "10.1.0"}, TargetError, "built with TensorRT 10.1.0"),
    ({"compute_capability": "7.5"}, TargetError, "built for compute capability 7.5"),
    ({"platform": "gpu"}, TargetError, "built on a discrete-GPU machine"),
])
def test_incompatible_engine_is_refused_before_deserialising(tmp_path: Path, gpu_here, changes, error, message):
    engine = write_engine(tmp_path, **(changes or {}))
    if changes is None:
        sidecar_path(engine).unlink()
    with pytest.raises(error, match=message):
        TensorRTRunner(engine).load()
    assert gpu_here.deserialised == []


def test_damaged_fingerprint_is_refused_before_deserialising(tmp_path: Path, gpu_here):
    engine = write_engine(tmp_path)
    sidecar_path(engine).write_text('{"engine_sha256": ')
    with pytest.raises(ModelError, match="is damaged"):
        TensorRTRunner(engine).load()
    assert gpu_here.deserialised == []


def test_hardware_compatible_engine_is_refused_on_sm75(tmp_path: Path, gpu_here, monkeypatch):
    monkeypatch.setattr(_cuda, "platform_name", lambda: "gpu")
    gpu_here.devices = [_cuda.Device(0, "Tesla T4", "7.5")]
    engine = write_engine(tmp_path, platform="gpu", compute_capability="8.6", hardware_compatibility="ampere+")
    with pytest.raises(TargetError, match="this GPU is sm 7.5"):
        TensorRTRunner(engine).load()
    assert gpu_here.deserialised == []


def test_compatible_engine_goes_on_to_tensorrt(tmp_path: Path, gpu_here):
    """Past the checks TensorRT gets the engine's bytes; its failure to load them is a readable error."""
    engine = write_engine(tmp_path, tensorrt_version="10.3.0.26")
    with pytest.raises(ModelError, match=r"TensorRT 10\.3\.0\.30 could not deserialise .*model\.engine.*rebuild it"):
        TensorRTRunner(engine).load()
    assert gpu_here.deserialised == [b"serialised engine"]


def test_version_compatible_engine_loads_with_host_code_allowed_on_a_newer_runtime(tmp_path: Path, gpu_here):
    gpu_here.trt = fake_trt("10.7.0", gpu_here.deserialised)
    engine = write_engine(tmp_path, version_compatible=True, dla_core=1)
    with pytest.raises(ModelError, match="could not deserialise"):
        TensorRTRunner(engine).load()
    runtime = gpu_here.trt.runtimes[0]
    assert gpu_here.deserialised and runtime.engine_host_code_allowed and runtime.DLA_core == 1


def test_no_gpu_or_wrong_device_is_one_clear_error(tmp_path: Path, gpu_here):
    engine = write_engine(tmp_path)
    with pytest.raises(TargetError, match=r"CUDA device 1 is not available on this machine \(1 visible\)"):
        TensorRTRunner(engine, device="GPU.1").load()
    gpu_here.devices = []
    with pytest.raises(TargetError, match="is a TensorRT engine and needs an NVIDIA GPU; none is visible"):
        TensorRTRunner(engine).load()
    assert gpu_here.deserialised == []


def test_a_dla_device_must_match_the_engine(tmp_path: Path, gpu_here):
    """bench passes the manifest record's device ("DLA:1"); the core is part of the engine, so it must agree."""
    with pytest.raises(TargetError, match=r"was built for the GPU, not DLA:1: the DLA core is part of the engine, so "
                                          r"rebuild it with `edgetl compile .* --dla-core 1`"):
        TensorRTRunner(write_engine(tmp_path), device="DLA:1").load()
    with pytest.raises(ModelError, match="could not deserialise"):  # past the checks
        TensorRTRunner(write_engine(tmp_path, dla_core=1), device="DLA:1").load()
    assert gpu_here.trt.runtimes[0].DLA_core == 1


def test_runner_options_are_checked_without_loading():
    TensorRTRunner.check_options({"device": "GPU"})
    TensorRTRunner.check_options({"device": "DLA:0"})
    assert (TensorRTRunner("e", device="GPU.1").device, TensorRTRunner("e", device="dla:1").dla_core) == (1, 1)
    with pytest.raises(EdgetlError, match="does not take option 'precision'"):
        TensorRTRunner.check_options({"precision": "int8"})
    with pytest.raises(EdgetlError, match="must be a CUDA device"):
        TensorRTRunner("model.engine", device="DLA")


# -- inference through (fake) Polygraphy buffers ----------------------------------------------------------
class FakeCuda:
    """``polygraphy.cuda``'s DeviceArray and Stream over a dict of byte arrays ("device memory")."""

    def __init__(self):
        memory, self.allocations, self.syncs = {}, [], []
        self.memory = memory
        cuda = self

        class DeviceArray:
            def __init__(self, shape=(), dtype=np.float32):
                self.dtype, self.ptr, self.allocated, self.shape = np.dtype(dtype), 0, 0, ()
                self.resize(shape)

            def resize(self, shape):
                nbytes = int(np.prod(shape)) * self.dtype.itemsize
                if nbytes > self.allocated:
                    self.ptr = 0x1000 * (len(cuda.allocations) + 1)
                    memory[self.ptr] = np.zeros(nbytes, np.uint8)
                    self.allocated = nbytes
                    cuda.allocations.append(nbytes)
                self.shape = tuple(shape)
                return self

            def copy_from(self, host, stream=None):
                assert host.dtype == self.dtype and stream is not None
                memory[self.ptr][:host.nbytes] = host.reshape(-1).view(np.uint8)
                return self

            def copy_to(self, host, stream=None):
                host.reshape(-1).view(np.uint8)[:] = memory[self.ptr][:host.nbytes]
                return host

            def free(self):
                memory.pop(self.ptr, None)

        class Stream:
            ptr = 0xBEEF

            def synchronize(self):
                cuda.syncs.append(True)

            def free(self):
                pass

        self.DeviceArray, self.Stream = DeviceArray, Stream


class FakeEngine:
    """Input ``input`` (N, 3, 4, 4) FP32, output ``logits`` (N, 2) FP16 = (mean, -mean) per image; batch 1..4."""

    num_io_tensors = 2

    def __init__(self, trt, cuda):
        self.trt, self.cuda = trt, cuda

    def get_tensor_name(self, index):
        return ("input", "logits")[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "input" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return (-1, 3, 4, 4) if name == "input" else (-1, 2)

    def get_tensor_dtype(self, name):
        return self.trt.DataType.FLOAT if name == "input" else self.trt.DataType.HALF

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 3, 4, 4), (1, 3, 4, 4), (4, 3, 4, 4)]

    def create_execution_context(self):
        engine = self

        class Context:
            addresses: dict = {}

            def set_input_shape(self, name, shape):
                self.shape = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                return (self.shape[0], 2)

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr

            def execute_async_v3(self, stream):
                assert stream == 0xBEEF
                memory = engine.cuda.memory
                n = self.shape[0]
                x = memory[self.addresses["input"]][:n * 48 * 4].view(np.float32).reshape(n, 3, 4, 4)
                mean = x.mean(axis=(1, 2, 3))
                out = np.stack([mean, -mean], axis=1).astype(np.float16)
                memory[self.addresses["logits"]][:out.nbytes] = out.reshape(-1).view(np.uint8)
                return True

        return Context()


def test_inference_through_device_buffers(tmp_path: Path, gpu_here):
    engine_obj = FakeEngine(None, gpu_here.cuda)
    gpu_here.trt = engine_obj.trt = fake_trt("10.3.0.30", gpu_here.deserialised, engine_obj)
    batch = np.random.default_rng(0).normal(size=(3, 3, 4, 4)).astype(np.float32)
    with TensorRTRunner(write_engine(tmp_path)) as runner:
        out = runner.infer(batch)
        assert out.dtype == np.float32 and out.shape == (3, 2)
        np.testing.assert_allclose(out[:, 0], batch.mean(axis=(1, 2, 3)), atol=1e-2)
        runner.infer(batch[:1])  # a smaller batch reuses the buffers
        assert len(gpu_here.cuda.allocations) == 2 and len(gpu_here.cuda.syncs) == 2
        assert runner.input_range() == ((1, 3, 4, 4), (1, 3, 4, 4), (4, 3, 4, 4))
        with pytest.raises(EdgetlError, match="outside the engine's optimization profile"):
            runner.infer(np.zeros((5, 3, 4, 4), np.float32))
        info = runner.describe()
    assert info.precision == "int8+fp16" and info.device == "cuda:0"
    assert info.extra["gpu"] == "Orin" and info.extra["requested_precision"] == "int8"
    assert info.extra["layer_precisions"] == {"int8": 40, "fp16": 9} and info.extra["driver"] == "540.4.0"


def test_precision_without_a_layer_summary_says_it_is_the_request(tmp_path: Path, gpu_here):
    engine_obj = FakeEngine(None, gpu_here.cuda)
    gpu_here.trt = engine_obj.trt = fake_trt("10.3.0.30", gpu_here.deserialised, engine_obj)
    engine = write_engine(tmp_path, executed_precision=None, layer_precisions={}, precision="fp16")
    with TensorRTRunner(engine) as runner:
        assert runner.describe().precision == "fp16 (requested; layer precisions unknown)"


# -- the CUDA helpers -----------------------------------------------------------------------------------
def test_polygraphy_missing_names_the_extra(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("polygraphy") is not None:
        pytest.skip("Polygraphy is installed here")
    with pytest.raises(MissingBackendError, match=r"polygraphy is required for TensorRT inference.*edgetl\[tensorrt\]"):
        _cuda.polygraphy_cuda()


def test_jetson_release_and_platform(tmp_path: Path, monkeypatch):
    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    monkeypatch.setattr(_cuda, "TEGRA_RELEASE", release)
    monkeypatch.setattr(_cuda, "DEVICE_TREE_MODEL", model)
    monkeypatch.setattr(_cuda, "_jetpack_package", lambda: None)
    assert _cuda.platform_name() == "gpu" and _cuda.jetson_release() == {}
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n")
    model.write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    assert _cuda.platform_name() == "jetson"
    assert _cuda.jetson_release() == {"l4t": "36.4.3", "jetpack": "6.2",
                                      "module": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"}
    release.write_text("# R36 (release), REVISION: 4, GCID: 1\n")
    assert _cuda.jetson_release()["l4t"] == "36.4.0" and _cuda.jetson_release()["jetpack"] == "6.1"


def test_kernel_driver_version(tmp_path: Path, monkeypatch):
    proc = tmp_path / "version"
    monkeypatch.setattr(_cuda, "NVIDIA_DRIVER_VERSION", proc)
    assert _cuda.kernel_driver_version() is None
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    assert _cuda.kernel_driver_version() == "550.54.15"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  540.4.0  Release Build\n")
    assert _cuda.kernel_driver_version() == "540.4.0"


def test_device_queries_without_a_driver_are_empty(monkeypatch):
    monkeypatch.setattr(_cuda, "_driver", lambda: None)
    assert _cuda.devices() == [] and _cuda.driver_cuda_version() is None
    with pytest.raises(TargetError, match="no NVIDIA GPU is visible"):
        _cuda.set_device(0)


def test_wheel_cuda_runtime_is_searched_and_the_environment_restored(tmp_path: Path, monkeypatch):
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.13").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    with _cuda._wheel_runtimes_searched():
        assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep)[:2] == ["/opt/x", str(lib)]
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/x"
