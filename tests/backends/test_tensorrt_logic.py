"""The TensorRT runner's pure-Python checks, without TensorRT or a GPU: the build sidecar it reads, and
the refusal of an engine built for another TensorRT version or GPU before it is deserialised."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetl.backends.tensorrt import TensorRTRunner, read_sidecar
from edgetl.errors import ModelError, TargetError


def fake_trt(version: str = "10.3.0", deserialised: list | None = None) -> SimpleNamespace:
    """The parts of the ``tensorrt`` module the runner touches before it has an engine."""
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data: bytes):
            """Returns None, as TensorRT does for an engine it cannot load."""
            if deserialised is not None:
                deserialised.append(data)

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            pass

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime)


def fake_torch(capabilities: dict[int, tuple[int, int]]) -> SimpleNamespace:
    """``torch`` with ``cuda.get_device_capability(index)`` answering from ``capabilities``."""
    return SimpleNamespace(cuda=SimpleNamespace(get_device_capability=lambda index: capabilities[index]))


def check(sidecar: dict, trt_version: str = "10.3.0", capability=(8, 7), device: int | str = 0) -> None:
    runner = TensorRTRunner("model.engine", device=device)
    runner.sidecar = sidecar
    capabilities = capability if isinstance(capability, dict) else {0: capability}
    runner._check_compatibility(fake_trt(trt_version), fake_torch(capabilities))


# -- the sidecar ---------------------------------------------------------------------------------
def test_sidecar_named_after_the_engine_comes_first(tmp_path: Path):
    engine = tmp_path / "resnet.engine"
    assert read_sidecar(engine) == {}
    (tmp_path / "build.json").write_text(json.dumps({"tensorrt_version": "10.1.0"}))
    assert read_sidecar(engine) == {"tensorrt_version": "10.1.0"}  # the build's report beside it
    (tmp_path / "resnet.json").write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    assert read_sidecar(engine) == {"tensorrt_version": "10.3.0"}
    (tmp_path / "model.json").write_text(json.dumps({"tensorrt_version": "9.0.0"}))  # another engine's
    assert read_sidecar(engine) == {"tensorrt_version": "10.3.0"}


# -- TensorRT version ----------------------------------------------------------------------------
@pytest.mark.parametrize("built, here", [("10.3.0", "10.3.0"), ("10.3.0.26", "10.3.1"), ("10.3", "10.3.0.26")])
def test_same_major_minor_tensorrt_is_accepted(built: str, here: str):
    check({"tensorrt_version": built}, trt_version=here)


@pytest.mark.parametrize("built, here", [("10.2.0", "10.3.0"), ("8.6.1", "10.3.0"), ("10.13.0", "10.1.3")])
def test_other_tensorrt_version_is_refused(built: str, here: str):
    with pytest.raises(TargetError, match=rf"^model\.engine was built with TensorRT {built}, this machine has "
                                          rf"{here}: rebuild the engine here"):
        check({"tensorrt_version": built}, trt_version=here)


# -- GPU architecture ----------------------------------------------------------------------------
def test_same_compute_capability_is_accepted():
    check({"tensorrt_version": "10.3.0", "compute_capability": "8.7"}, capability=(8, 7))
    check({"compute_capability": 8.9}, capability=(8, 9))  # a number in the JSON reads the same


def test_other_compute_capability_is_refused():
    with pytest.raises(TargetError, match=r"^model\.engine was built for compute capability 8\.6, this GPU is 8\.7: "
                                          r"rebuild the engine on this device"):
        check({"tensorrt_version": "10.3.0", "compute_capability": "8.6"}, capability=(8, 7))


def test_hardware_compatible_engine_may_run_on_another_architecture():
    check({"compute_capability": "8.6", "hardware_compatibility": True}, capability=(8, 9))


def test_compute_capability_of_the_runners_own_device():
    sidecar = {"compute_capability": "8.6"}
    gpus = {0: (8, 9), 1: (8, 6)}
    check(sidecar, capability=gpus, device="cuda:1")
    with pytest.raises(TargetError, match="this GPU is 8.9"):
        check(sidecar, capability=gpus, device=0)


def test_without_a_sidecar_nothing_is_checked():
    """No recorded versions: TensorRT's own deserialisation is the only check (the GPU is not queried)."""
    check({}, trt_version="8.0.0", capability={})


# -- the order in load(): refuse before deserialising --------------------------------------------
@pytest.fixture
def gpu_here(monkeypatch):
    """torch believes one GPU of compute capability 8.7 is present; TensorRT is a fake recording
    what it is asked to deserialise."""
    import edgetl.backends.tensorrt as module

    torch = pytest.importorskip("torch")
    deserialised: list[bytes] = []
    monkeypatch.setattr(module, "import_tensorrt", lambda: fake_trt("10.3.0", deserialised))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 7))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    return deserialised


def _engine(folder: Path, sidecar: dict | None) -> Path:
    engine = folder / "model.engine"
    engine.write_bytes(b"serialised engine")
    if sidecar is not None:
        (folder / "model.json").write_text(json.dumps(sidecar))
    return engine


@pytest.mark.parametrize("sidecar, message", [
    ({"tensorrt_version": "10.1.0", "compute_capability": "8.7"}, "built with TensorRT 10.1.0"),
    ({"tensorrt_version": "10.3.0", "compute_capability": "7.5"}, "built for compute capability 7.5"),
])
def test_incompatible_engine_is_refused_before_deserialising(tmp_path: Path, gpu_here, sidecar, message):
    with pytest.raises(TargetError, match=message):
        TensorRTRunner(_engine(tmp_path, sidecar)).load()
    assert gpu_here == []


@pytest.mark.parametrize("sidecar", [{"tensorrt_version": "10.3.2", "compute_capability": "8.7"}, None])
def test_compatible_engine_goes_on_to_tensorrt(tmp_path: Path, gpu_here, sidecar):
    """Past the check TensorRT gets the engine's bytes; its failure to load them is a readable error."""
    with pytest.raises(ModelError, match=r"TensorRT 10\.3\.0 could not deserialise .*model\.engine.*rebuild it"):
        TensorRTRunner(_engine(tmp_path, sidecar)).load()
    assert gpu_here == [b"serialised engine"]


def test_no_gpu_or_wrong_device_is_one_clear_error(tmp_path: Path, gpu_here, monkeypatch):
    import torch

    engine = _engine(tmp_path, None)
    with pytest.raises(TargetError, match=r"CUDA device 1 is not available on this machine \(1 visible\)"):
        TensorRTRunner(engine, device="GPU.1").load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TargetError, match="is a TensorRT engine and needs an NVIDIA GPU; none is visible"):
        TensorRTRunner(engine).load()
    assert gpu_here == []
