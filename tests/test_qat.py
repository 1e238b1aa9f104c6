"""Quantization-aware training as a stage of the run (``TARGET:int8:qat``), for both backends, on a tiny model:
recorded with its inputs and the training files, measured as every build is, resumed after kill -9 bit for
bit, run by itself when PTQ misses the budget, and a PTQ miss it fixes no longer fails `edgetl status`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.build import TargetBuildConfig, build_target
from edgetl.cli import cli
from edgetl.errors import AccuracyBudgetError
from edgetl.manifest import Manifest
from edgetl.qat import default_qat_epochs, qat_target
from edgetl.run import run_status

torch = pytest.importorskip("torch")
FAST = dict(precision="int8", calib_size=12, sensitivity_images=0, latency_runs=0, max_drop="none")


def _copy(learned_base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(learned_base, tmp_path / "run"))


def test_default_epochs_follow_the_fine_tuning():
    assert [default_qat_epochs(n) for n in (1, 10, 30, 200)] == [2, 2, 3, 10]


def test_qdq_qat_is_a_recorded_stage_with_its_training(learned_base, tmp_path):
    from edgetl.compress.quantize.ort_qdq import quantized_layers

    run = _copy(learned_base, tmp_path)
    result = qat_target(run, TargetBuildConfig(target="jetson", calibration="minmax", qat_epochs=2, **FAST),
                        progress=False)
    record = Manifest.load(run).record("jetson:int8:qat")
    assert result.stage == "jetson:int8:qat" and record.status == "complete"
    assert set(record.inputs) == {"onnx/model.onnx", "checkpoint.pt"}
    assert {"jetson/int8-qat/model.qdq.onnx", "qat/jetson-int8/checkpoint.pt", "jetson/int8-qat/build.json"} <= \
        set(record.artifacts)
    m = record.metrics
    assert m["method"] == "qat" and m["calibration"] == "minmax" and m["qat"]["engine"] == "qdq-fake-quant"
    assert 1 <= m["qat"]["epochs_run"] <= 2 and m["qat"]["fake_quantized_layers"] > 0
    import onnx

    model = onnx.load(result.path)
    assert len(quantized_layers(model)) == m["qat"]["fake_quantized_layers"]
    built = json.loads((run / "jetson" / "int8-qat" / "build.json").read_text())
    assert built["metrics"]["method"] == "qat" and built["metrics"]["top1"] == m["top1"]
    from edgetl.bench import BenchConfig, benchmark

    report = benchmark(run, BenchConfig(batch_sizes=(1,), warmup=1, iterations=3, rounds=1, round_time_s=0.3,
                                        min_iterations=2, memory=False, bootstrap=100, runtimes=("onnxruntime",)),
                       progress=False)
    row = next(r for r in report.results if r["key"] == "jetson/int8-qat/model.qdq.onnx")
    assert row["label"].endswith(" QAT") and row["build"]["method"] == "qat"
    assert row["accuracy"]["top1"] == pytest.approx(m["top1"])
    manifest = Manifest.load(run)  # the checkpoint trained again: the QAT build is stale
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes() + b"\0")
    manifest.add_artifact("finetune", run / "checkpoint.pt")
    manifest.save()
    states = {s.stage: s for s in run_status(run)}
    assert states["jetson:int8:qat"].state == "stale" and "checkpoint.pt" in states["jetson:int8:qat"].detail
    assert "--qat" in states["jetson:int8:qat"].detail


@pytest.mark.slow
def test_nncf_qat_ir_runs_in_int8(learned_base, tmp_path):
    run = _copy(learned_base, tmp_path)
    result = qat_target(run, TargetBuildConfig(target="intel-cpu", qat_epochs=1, **FAST), progress=False)
    m = Manifest.load(run).record("intel-cpu:int8:qat").metrics
    assert m["executed_precision"] == "int8" and m["qat"]["engine"] == "nncf-torch"
    assert m["qat"]["kernels"] == "torch"  # the default: no C++ compile
    from edgetl.backends.openvino import import_openvino

    ops = import_openvino().Core().read_model(result.path).get_ops()
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) > 0


@pytest.mark.slow
def test_a_ptq_miss_runs_qat_and_a_fixed_miss_is_current(learned_base, tmp_path, monkeypatch):
    """PTQ pinned to miss (its float reference is 100%), QAT judged against the same reference also misses:
    both are recorded budget-missed and status fails; with the QAT build recorded complete, the PTQ miss is
    superseded and status passes."""
    run = _copy(learned_base, tmp_path)
    monkeypatch.setattr("edgetl.build.checkpoint_top1", lambda *a, **k: 1.0)
    config = TargetBuildConfig(target="jetson", calibration="minmax", accuracy_control=False, qat_epochs=1,
                               **{**FAST, "max_drop": 1.0})
    with pytest.raises(AccuracyBudgetError, match=r"jetson:int8:qat missed its accuracy budget"):
        build_target(run, config)
    manifest = Manifest.load(run)
    assert manifest.record("jetson:int8").status == manifest.record("jetson:int8:qat").status == "budget-missed"
    assert CliRunner().invoke(cli, ["status", str(run)]).exit_code == 4
    data = json.loads((run / "edgetl.json").read_text())
    data["stages"]["jetson:int8:qat"]["status"] = "complete"  # as if QAT had met the budget
    (run / "edgetl.json").write_text(json.dumps(data))
    status = CliRunner().invoke(cli, ["status", str(run)])
    assert status.exit_code == 0 and "superseded by jetson:int8:qat" in status.output
    from edgetl.package import PackageConfig, package

    meta = package(run, PackageConfig(target="jetson", output=str(tmp_path / "b.tar.gz"))).meta
    assert meta["source"]["stage"] == "jetson:int8:qat" and meta["budget"]["method"] == "qat"
    assert meta["model"]["key"] == "jetson/int8-qat/model.qdq.onnx" and "model/checkpoint.pt" not in meta["files"]


def test_qat_is_refused_for_float_precisions(learned_base):
    result = CliRunner().invoke(cli, ["export", str(learned_base), "--target", "intel-cpu", "--precision", "fp32",
                                      "--qat"])
    assert result.exit_code == 1 and "--qat trains an INT8 model" in result.output


SCRIPT = """
import os, sys
from edgetl.build import TargetBuildConfig
from edgetl.qat import qat_target
qat_target(sys.argv[1], TargetBuildConfig(target="jetson", calibration="minmax", qat_epochs=6, qat_patience=6,
           precision="int8", calib_size=12, sensitivity_images=0, latency_runs=0, max_drop="none"), progress=False)
"""


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_bit_identical(learned_base, tmp_path):
    config = TargetBuildConfig(target="jetson", calibration="minmax", qat_epochs=6, qat_patience=6, **FAST)
    whole = Path(shutil.copytree(learned_base, tmp_path / "whole"))
    qat_target(whole, config, progress=False)
    killed = Path(shutil.copytree(learned_base, tmp_path / "killed"))
    last = killed / "qat" / "jetson-int8" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file() and torch.load(last, weights_only=False)["epoch"] >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait() == -signal.SIGKILL, "QAT finished before it could be killed"
    assert Manifest.load(killed).record("jetson:int8:qat").status == "running"
    epoch = torch.load(last, weights_only=False)["epoch"]
    assert 1 <= epoch < 6
    qat_target(killed, config, progress=False)
    a, b = (torch.load(r / "qat" / "jetson-int8" / "checkpoint.pt", weights_only=False) for r in (whole, killed))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert (whole / "jetson/int8-qat/model.qdq.onnx").read_bytes() == (killed / "jetson/int8-qat/model.qdq.onnx").read_bytes()
    history = [json.loads((r / "qat/jetson-int8/metrics.json").read_text())["history"] for r in (whole, killed)]
    assert [{k: v for k, v in h.items() if k != "time_s"} for h in history[0]] == \
           [{k: v for k, v in h.items() if k != "time_s"} for h in history[1]]
