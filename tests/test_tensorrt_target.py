"""The TensorRT target family without TensorRT: profiles and their hardware facts, option checks that fail
before any work, RUN defaulting to the latest run, and (with the learned Lite0 run) the jetson build itself:
the Q/DQ ONNX, its FP16 twin, build.json's engine settings and trtexec lines, the manifest record and bench."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.build import TargetBuildConfig, build_target
from edgetl.cli import cli
from edgetl.errors import ConfigError, RunFolderError, TargetError
from edgetl.profiles import all_targets, load_target
from edgetl.run import latest_run
from edgetl.toolchains import get_toolchain
from edgetl.toolchains.trt_settings import EngineSettings, Hardware

TRT_TARGETS = ("jetson", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "nvidia-gpu")


def invoke(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    old = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


# -- profiles ------------------------------------------------------------------------------------
def test_targets_lists_every_profile_on_one_line():
    code, out = invoke("targets")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == len(all_targets())
    for name in (*TRT_TARGETS, "intel-cpu"):
        assert sum(line.split()[0] == name for line in lines) == 1
    assert all(len(line.split()) > 3 for line in lines)  # name, toolchain, precisions, a description


@pytest.mark.parametrize("name, cores", [("jetson", 0), ("jetson-orin-nano", 0), ("jetson-orin-nx", 2),
                                         ("jetson-agx-orin", 2), ("nvidia-gpu", 0)])
def test_tensorrt_profiles_carry_the_module_facts(name, cores):
    profile = load_target(name)
    hardware = Hardware.from_dict(profile.hardware)
    assert profile.toolchain == "tensorrt" and profile.default_precision == "int8"
    assert hardware.max_dla_cores == cores
    if name.startswith("jetson"):
        assert hardware.platform == "jetson" and hardware.compute_capability == "8.7"
        assert "10" in hardware.tensorrt and hardware.tensorrt["10"].startswith("10.3")
    EngineSettings.from_dict(profile.engine)  # the engine block is valid


def test_orin_nx_dla_cores_depend_on_memory():
    assert Hardware.from_dict(load_target("jetson-orin-nx").hardware).dla_cores == {"8GB": 1, "16GB": 2}


def _check(target: str, precision: str = "int8", **options):
    profile = load_target(target)
    get_toolchain(profile.toolchain).check_config(profile, precision, TargetBuildConfig(target=target, **options))


def test_dla_requests_are_checked_against_the_module():
    with pytest.raises(TargetError, match="jetson-orin-nano has no DLA"):
        _check("jetson-orin-nano", dla_core=0)
    with pytest.raises(TargetError, match="jetson has no DLA"):
        _check("jetson", dla_core=0)
    with pytest.raises(TargetError, match="DLA cores 0..1"):
        _check("jetson-agx-orin", dla_core=2)
    _check("jetson-agx-orin", dla_core=1)
    _check("jetson-orin-nx", dla_core=1)


def test_options_other_toolchains_cannot_honour():
    with pytest.raises(ConfigError, match="--calibration, --dla-core only apply to TensorRT"):
        _check("intel-cpu", dla_core=0, calibration="entropy")
    with pytest.raises(TargetError, match="no hardware-compatible engines on Jetson"):
        _check("jetson", hardware_compatibility="ampere+")
    _check("nvidia-gpu", hardware_compatibility="ampere+", version_compatible=True)
    with pytest.raises(ConfigError, match="int8 only"):
        _check("nvidia-gpu", "fp16", calibration="entropy")
    with pytest.raises(ConfigError, match="max_batch"):
        _check("nvidia-gpu", max_batch=0)


def test_engine_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="unknown.*max_batch"):
        EngineSettings.from_dict({"max_batchs": 4})
    with pytest.raises(ConfigError, match="hardware_compatibility"):
        EngineSettings(hardware_compatibility="turing+")
    with pytest.raises(ConfigError, match="optimization_level"):
        EngineSettings(optimization_level=6)


def test_cli_dla_on_orin_nano_fails_before_any_work(learned_base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(learned_base, run)
    before = sorted(p.name for p in run.iterdir())
    code, out = invoke("export", run, "--target", "jetson-orin-nano", "--dla-core", "0")
    assert code != 0 and "error: target jetson-orin-nano has no DLA" in out
    assert sorted(p.name for p in run.iterdir()) == before  # nothing half-written


# -- RUN defaults to the latest run under ./runs ---------------------------------------------------
def test_latest_run_is_the_most_recently_modified(tmp_path, learned_base):
    with pytest.raises(RunFolderError, match="no run folder under .*runs: fine-tune"):
        latest_run(tmp_path / "runs")
    older, newer = tmp_path / "runs" / "b-older", tmp_path / "runs" / "a-newer"
    for run, stamp in ((older, 1_000_000), (newer, 2_000_000)):
        shutil.copytree(learned_base, run)
        os.utime(run / "edgetl.json", (stamp, stamp))
    (tmp_path / "runs" / "notes").mkdir()  # not a run
    assert latest_run(tmp_path / "runs") == newer
    now = time.time()
    os.utime(older / "edgetl.json", (now, now))
    assert latest_run(tmp_path / "runs") == older


def test_export_without_run_says_which_run_it_took(tmp_path, learned_base):
    code, out = invoke("export", "--target", "jetson", cwd=tmp_path)
    assert code != 0 and "no run given and no run folder under ./runs" in out
    shutil.copytree(learned_base, tmp_path / "runs" / "probe")
    code, out = invoke("status", cwd=tmp_path)
    assert "using runs/probe, the most recent run under ./runs" in out
