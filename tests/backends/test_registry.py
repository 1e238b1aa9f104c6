"""The runtime table, the lazy-import helper, runner options and the device that reaches the runner."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl import bench, doctor
from edgetl._lazy import lazy_import, version_tuple
from edgetl.backends import RUNNERS, RUNTIMES, Runner, create_runner, runtime_for_suffix, runtime_spec
from edgetl.errors import ConfigError, MissingBackendError, TargetError
from edgetl.run.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
ROWS = sorted(RUNTIMES)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# -- every row resolves -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROWS)
def test_row_resolves_to_its_runner(name):
    spec = RUNTIMES[name]
    cls = spec.runner_class()
    assert issubclass(cls, Runner) and cls.runtime == name and spec.name == name
    assert spec.title and re.fullmatch(r"#[0-9a-f]{6}", spec.colour) and spec.extensions
    assert all(ext.startswith(".") and ext == ext.lower() for ext in spec.extensions)


@pytest.mark.parametrize("name", ROWS)
def test_row_imports_its_library_or_names_the_install(name, monkeypatch):
    spec = RUNTIMES[name]
    if _installed(spec.module):
        assert spec.import_library().__name__ == spec.module
    monkeypatch.setitem(sys.modules, spec.module, None)  # as if not installed
    with pytest.raises(MissingBackendError) as info:
        spec.import_library()
    assert spec.install_hint in str(info.value) and "not installed" in str(info.value)


def test_install_hints_name_real_extras_and_floors_match_pyproject():
    project = _pyproject()
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + [r for reqs in extras.values() for r in reqs]
    floors = dict(re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", r).groups() for r in requirements if ">=" in r)
    for spec in RUNTIMES.values():
        assert spec.extra is None or spec.extra in extras, f"{spec.name}: no extra {spec.extra!r} in pyproject"
        assert spec.min_version == floors.get(spec.package), f"{spec.name}: floor differs from pyproject"
    assert RUNTIMES["onnxruntime"].install_hint == "pip install 'onnxruntime>=1.18'"  # a core dependency
    assert RUNTIMES["openvino"].install_hint == "pip install 'edgetl[openvino]'"


def test_resolving_runners_imports_no_runtime_library():
    code = ("import sys; from edgetl.backends import RUNTIMES\n"
            "[spec.runner_class() for spec in RUNTIMES.values()]\n"
            "print([s.module for s in RUNTIMES.values() if s.module in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_runtime_suggests():
    with pytest.raises(ConfigError, match=r"unknown runtime 'openvno'\. Did you mean: openvino\?"):
        runtime_spec("openvno")


# -- extensions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("filename, runtime", [
    ("checkpoint.pt", "torch"), ("weights.pth", "torch"), ("model.onnx", "onnxruntime"), ("MODEL.ONNX", "onnxruntime"),
    ("model.xml", "openvino"), ("model.engine", "tensorrt"), ("model.plan", "tensorrt")])
def test_runtime_for_path(filename, runtime):
    assert bench.runtime_for_path(Path("run") / filename) == runtime


def test_runtime_for_unknown_extension_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"cannot tell the runtime of .*model\.tflite.*\.engine.*\.xml"):
        bench.runtime_for_path(Path("model.tflite"))
    assert runtime_for_suffix(".tflite") is None


def test_no_extension_is_claimed_twice():
    claimed = [ext for spec in RUNTIMES.values() for ext in spec.extensions]
    assert len(claimed) == len(set(claimed))


# -- bench, doctor and plots read the table ------------------------------------------------------
def test_bench_and_doctor_list_the_table():
    assert list(bench.RUNTIME_TITLES) == list(RUNTIMES)
    assert set(bench.EXTENSION_RUNTIMES.values()) == set(RUNTIMES) == set(bench.RUNTIME_MODULES) == set(RUNNERS)
    assert list(doctor.runtime_versions()) == list(RUNTIMES)
    assert not set(doctor.LIBRARIES) & set(RUNTIMES)
    assert len({spec.colour for spec in RUNTIMES.values()}) == len(RUNTIMES)


def test_a_new_row_reaches_doctor_and_the_factory(monkeypatch):
    row = RUNTIMES["onnxruntime"]
    fake = dataclasses.replace(row, name="fake", extensions=(".fake",), module="edgetl_fake_runtime",
                               package="edgetl-fake-runtime", extra=None, min_version=None)
    monkeypatch.setitem(RUNTIMES, "fake", fake)
    assert runtime_for_suffix(".FAKE") == "fake"
    state = doctor.runtime_versions()["fake"]
    assert state == {"installed": False, "install": "pip install edgetl-fake-runtime"}
    assert "fake" in doctor.render_report({**doctor.device_fingerprint(), "runtimes": doctor.runtime_versions(),
                                           "openvino_devices": []})
    assert create_runner("fake", "model.fake").artifact == Path("model.fake")


def test_doctor_reports_a_runtime_that_is_too_old(monkeypatch):
    spec = RUNTIMES["onnxruntime"]
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.10.0" if name == spec.package else real(name))
    state = doctor.runtime_versions()["onnxruntime"]
    assert state["too_old"] and state["required"] == "1.18" and state["install"] == "pip install -U 'onnxruntime>=1.18'"
    line = doctor._status_line("onnxruntime", state)
    assert "1.10.0 is too old (edgetl needs >= 1.18)" in line


# -- lazy_import ---------------------------------------------------------------------------------
def test_version_floor_is_a_one_line_error(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.2.1" if name == "fakedist" else real(name))
    with pytest.raises(MissingBackendError) as info:
        lazy_import("json", package="fakedist", extra="openvino", purpose="testing", min_version="10.0")
    message = str(info.value)
    assert message == ("fakedist 9.2.1 is installed but edgetl needs fakedist>=10.0 for testing: "
                       "pip install -U 'edgetl[openvino]'")
    assert info.value.found == "9.2.1" and info.value.required == "10.0"
    assert lazy_import("json", package="fakedist", min_version="9.2").__name__ == "json"


@pytest.mark.skipif(not _installed("openvino"), reason="openvino missing")
def test_openvino_too_old(monkeypatch):
    from edgetl.backends.openvino import import_openvino

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2023.3.0" if name == "openvino" else real(name))
    with pytest.raises(MissingBackendError, match=r"^openvino 2023\.3\.0 is installed but edgetl needs "
                                                  r"openvino>=2024\.4 for Intel CPU targets: "
                                                  r"pip install -U 'edgetl\[openvino\]'$"):
        import_openvino()


def test_missing_and_broken_libraries(tmp_path, monkeypatch):
    with pytest.raises(MissingBackendError, match=r"^edgetl_no_such_lib is required but is not installed: "
                                                  r"pip install 'edgetl_no_such_lib>=1\.0'$"):
        lazy_import("edgetl_no_such_lib", min_version="1.0")
    (tmp_path / "edgetl_broken_lib.py").write_text("import edgetl_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingBackendError, match=r"installed but cannot be imported .*edgetl_missing_dependency"):
        lazy_import("edgetl_broken_lib", extra="prune")


@pytest.mark.parametrize("found, floor, ok", [
    ("2024.4.1-16579-c3152d32c9c", "2024.4", True), ("2.14", "2.14.0", True), ("10.0.1.6", "10.0", True),
    ("9.2", "10.0", False), ("2024.3.9", "2024.4", False), ("1.18.0rc1", "1.18", True)])
def test_version_tuple_compares_numerically(found, floor, ok):
    assert (version_tuple(found) >= version_tuple(floor)) is ok


def test_old_helpers_use_the_table(monkeypatch):
    from edgetl.backends.onnxruntime import import_onnxruntime
    from edgetl.compress.quantize import import_nncf

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingBackendError, match=r"pip install 'onnxruntime>=1\.18'$"):
        import_onnxruntime()
    with pytest.raises(MissingBackendError, match=r"nncf is required for INT8 quantization .*'edgetl\[openvino\]'$"):
        import_nncf()


# -- runner options ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROWS)
def test_declared_options_match_the_constructor(name):
    cls = RUNTIMES[name].runner_class()
    keywords = {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert keywords == set(cls.option_names)


@pytest.mark.parametrize("name", ROWS)
def test_unknown_option_is_refused_with_a_suggestion(name):
    with pytest.raises(ConfigError) as info:
        create_runner(name, "model", threds=2)
    message = str(info.value)
    assert message.startswith(f"{name} runner does not take option 'threds'. Did you mean: threads")
    assert "It takes: threads" in message and "\n" not in message
    with pytest.raises(ConfigError, match="does not take option 'threds'"):
        RUNTIMES[name].runner_class().check_options({"threds": 2})


def test_option_of_another_runtime_is_refused():
    with pytest.raises(ConfigError, match=r"^onnxruntime runner does not take option 'precision_hint'\. "
                                          r"It takes: threads, providers, disabled_optimizers$"):
        create_runner("onnxruntime", "model.onnx", precision_hint="f32")
    with pytest.raises(ConfigError, match=r"openvino runner does not take option 'precison_hint'\. "
                                          r"Did you mean: precision_hint"):
        create_runner("openvino", "model.xml", precison_hint="f32")


def test_check_options_checks_values_too():
    ov = runtime_spec("openvino").runner_class()
    ov.check_options({"performance_hint": "THROUGHPUT", "device": "GPU", "streams": 2})
    with pytest.raises(ConfigError, match="performance_hint must be one of"):
        ov.check_options({"performance_hint": "FAST"})
    with pytest.raises(ConfigError, match="tensorrt runner device must be a CUDA device"):
        runtime_spec("tensorrt").runner_class().check_options({"device": "TPU0"})
    assert create_runner("tensorrt", "model.engine", device="cuda:1").device == 1


# -- the device reaches the runner ---------------------------------------------------------------
def test_check_device():
    from edgetl.backends.openvino import check_device

    check_device("GPU", ["CPU", "GPU.0"])
    check_device("GPU.1", ["CPU", "GPU.0", "GPU.1"])
    check_device("AUTO", ["CPU"])
    check_device("AUTO:CPU", ["CPU"])
    for device in ("GPU", "NPU", "AUTO:GPU,CPU", "GPU.1", "HETERO:GPU,CPU"):
        with pytest.raises(TargetError) as info:
            check_device(device, ["CPU", "GPU.0"] if device == "GPU.1" else ["CPU"])
        assert "is not available on this machine (OpenVINO sees: CPU" in str(info.value)
        assert "\n" not in str(info.value)


def _no_gpu() -> None:
    import openvino as ov

    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU")


@pytest.mark.openvino
@pytest.mark.skipif(not _installed("openvino"), reason="openvino missing")
def test_openvino_runner_refuses_a_missing_device(tiny_run):
    from edgetl.backends.openvino import OpenVINORunner

    _no_gpu()
    with pytest.raises(TargetError, match=r"^OpenVINO device 'GPU' is not available on this machine \(OpenVINO sees: "):
        create_runner("openvino", tiny_run / "onnx" / "model.onnx", device="gpu").load()
    import openvino as ov

    model = ov.Core().read_model(str(tiny_run / "onnx" / "model.onnx"))
    with pytest.raises(TargetError, match="device 'GPU' is not available"):
        OpenVINORunner.from_model(model, device="GPU")


@pytest.mark.openvino
@pytest.mark.skipif(not _installed("openvino"), reason="openvino missing")
def test_build_for_a_gpu_profile_fails_instead_of_timing_the_cpu(tiny_run, tmp_path, monkeypatch):
    """A throwaway intel-gpu profile: the build stops with one line naming the device, records no artifact."""
    from edgetl import build
    from edgetl.profiles import TargetProfile

    _no_gpu()
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    profile = TargetProfile.from_dict({"name": "intel-gpu", "runtime": "openvino", "device": "GPU",
                                       "precisions": ["fp32"], "runner_options": {"performance_hint": "LATENCY"}})
    monkeypatch.setattr(build, "load_target", lambda name: profile)
    with pytest.raises(TargetError) as info:
        build.build_target(run, build.TargetBuildConfig(target="intel-gpu", latency_runs=1, sensitivity_images=0))
    assert "OpenVINO device 'GPU' is not available on this machine" in str(info.value)
    assert "\n" not in str(info.value)
    stage = json.loads((run / "edgetl.json").read_text())["stages"]["intel-gpu:fp32"]
    assert stage["status"] == "failed" and not stage.get("artifacts")
    assert not (run / "intel-gpu" / "fp32").exists()


def _fake_manifest(tmp_path: Path, entry: dict) -> Manifest:
    """A manifest in memory (never saved) recording an ONNX and an IR with ``entry``'s fields."""
    (tmp_path / "intel-gpu" / "fp32").mkdir(parents=True)
    (tmp_path / "intel-gpu" / "fp32" / "model.xml").write_text("<net/>")
    stages = {"onnx": {"status": "complete", "artifacts": {"onnx/model.onnx": {"bytes": 0, "runtime": "onnxruntime",
                                                                               "precision": "fp32"}}},
              "intel-gpu:fp32": {"status": "complete", "artifacts": {"intel-gpu/fp32/model.xml": {"bytes": 6, **entry}}}}
    return Manifest(tmp_path, {"stages": stages})


def test_bench_runs_an_artifact_on_its_recorded_device_and_options(tmp_path):
    manifest = _fake_manifest(tmp_path, {"runtime": "openvino", "precision": "fp32", "device": "GPU",
                                         "runner_options": {"performance_hint": "THROUGHPUT", "precision_hint": "f32"}})
    targets = bench.discover_artifacts(manifest)
    assert targets[0].options == {} and targets[1].options["device"] == "GPU"
    variants = bench.expand_variants(targets, bench.BenchConfig(threads=2, performance_hint="latency"))
    ov = [v for v in variants if v.runtime == "openvino"]
    assert [v.variant for v in ov] == ["default", "f32-hint"]
    assert ov[0].options == {"device": "GPU", "performance_hint": "LATENCY", "precision_hint": None, "threads": 2}
    assert ov[1].options["precision_hint"] == "f32" and ov[1].options["device"] == "GPU"
    assert [v.options for v in variants if v.runtime == "onnxruntime"] == [{"threads": 2}]
    # without bench overrides, the recorded options stand
    assert bench.expand_variants(targets, bench.BenchConfig())[1].options["performance_hint"] == "THROUGHPUT"


def test_bench_keeps_the_recorded_hint_of_a_non_fp32_ir(tmp_path):
    manifest = _fake_manifest(tmp_path, {"runtime": "openvino", "precision": "int8", "device": "CPU",
                                         "runner_options": {"precision_hint": "bf16"}})
    variants = bench.expand_variants(bench.discover_artifacts(manifest), bench.BenchConfig())
    assert [(v.variant, v.options) for v in variants if v.runtime == "openvino"] == [
        ("default", {"device": "CPU", "precision_hint": "bf16"})]
