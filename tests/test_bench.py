"""The benchmark harness on the tiny run: structure, statistics, reports, bad input, CLI."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl import bench
from edgetl.bench import BenchConfig, accuracy_drop, benchmark, compare_reports, latency_stats, mcnemar_exact_p
from edgetl.cli import cli
from edgetl.errors import ConfigError, DatasetError, RegressionError, RunFolderError
from edgetl.manifest import Manifest

FAST = dict(batch_sizes=(1, 2), warmup=1, iterations=3, rounds=2, round_time_s=0.5, min_iterations=2,
            memory=False, bootstrap=200)


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (bench writes into the run folder and its manifest)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def tiny_report(tiny_run, tmp_path_factory):
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("bench") / "run"))
    return run, benchmark(run, BenchConfig(**FAST), progress=False)


# -- statistics --------------------------------------------------------------------------------
def test_latency_stats_from_samples():
    rng = np.random.default_rng(1)
    samples = list(rng.gamma(4.0, 1.0, 200))
    stats = latency_stats(samples, [np.median(samples[:100]), np.median(samples[100:])], batch=8)
    assert stats["p50_ms"] == pytest.approx(np.median(samples))
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["p50_stable_ms"] == min(stats["round_p50_ms"])
    assert stats["throughput_ips"] == pytest.approx(8000.0 / stats["p50_stable_ms"])


def test_mcnemar_exact():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact_p(3, 4) == pytest.approx(1.0)


def test_accuracy_drop_identical_predictions_is_noise():
    correct = np.random.default_rng(0).random(100) < 0.8
    out = accuracy_drop(correct, correct.copy(), resamples=300)
    assert out["top1_drop_pts"] == 0.0 and out["ci95_pts"] == [0.0, 0.0] and out["within_noise"]


def test_accuracy_drop_large_drop_is_significant():
    ref = np.ones(200, bool)
    cand = ref.copy()
    cand[:40] = False
    out = accuracy_drop(ref, cand, resamples=500)
    assert out["top1_drop_pts"] == pytest.approx(20.0)
    assert out["ci95_pts"][0] > 0 and not out["within_noise"]
    assert out["discordant"] == {"reference_only_correct": 40, "candidate_only_correct": 0}
    assert out["mcnemar_p"] < 1e-6


def test_accuracy_drop_one_image_is_noise():
    ref = np.ones(50, bool)
    cand = ref.copy()
    cand[0] = False
    out = accuracy_drop(ref, cand, resamples=500)
    assert out["top1_drop_pts"] == pytest.approx(2.0) and out["within_noise"]


# -- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_sizes=(0,)), "batch"), (dict(rounds=0), "rounds"), (dict(threads=0), "threads"),
    (dict(performance_hint="fast"), "performance_hint"), (dict(fail_on_regression=5.0), "compare"),
    (dict(runtimes=("tensorflow",)), "unknown runtime"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)


def test_parse_batch_sizes():
    assert bench.parse_batch_sizes("1,8,32") == (1, 8, 32)
    assert bench.parse_batch_sizes("4,4,1") == (4, 1)
    for bad, why in (("", "positive integers"), ("a", "comma-separated integers"), ("1,-2", "positive integers")):
        with pytest.raises(ConfigError, match=f"--batch takes {why} such as 1,8,32, not '{bad}'"):
            bench.parse_batch_sizes(bad)


# -- a full run -----------------------------------------------------------------------------------
def test_report_structure(tiny_report):
    run, report = tiny_report
    data = report.data
    assert data["schema_version"] == bench.SCHEMA_VERSION and data["kind"] == "edgetl.bench"
    by_runtime = {r["runtime"]: r for r in data["results"]}
    assert {"torch", "onnxruntime"} <= set(by_runtime)
    assert data["reference"] == by_runtime["torch"]["label"]
    n = data["data"]["images"]
    for res in data["results"]:
        assert res["status"] == "ok", res["reason"]
        assert res["precision_executed"] == "fp32" and res["load_s"] >= 0 and res["size_bytes"] > 0
        assert [s["batch"] for s in res["latency"]] == [1, 2]
        for stat in res["latency"]:
            assert 0 < stat["min_ms"] <= stat["p50_ms"] <= stat["p90_ms"] <= stat["p99_ms"] <= stat["max_ms"]
            assert len(stat["round_p50_ms"]) == 2 and stat["runs"] >= 4
            assert stat["p50_stable_ms"] == min(stat["round_p50_ms"])
        assert data["method"]["allocator"] in ("glibc, mmap/trim thresholds 1 GiB", "default")
        acc = res["accuracy"]
        assert acc["samples"] == n and acc["top1"] == by_runtime["torch"]["accuracy"]["top1"]  # float ONNX: parity
        assert acc["top5"] is None  # 3 classes: top-5 would be trivially 100%
        assert set(acc["per_class"]) == set(data["classes"])
        vs = res["vs_reference"]
        assert vs["ci95_pts"][0] <= vs["top1_drop_pts"] <= vs["ci95_pts"][1]
    ref = by_runtime["torch"]["vs_reference"]
    assert ref["is_reference"] and ref["top1_drop_pts"] == 0 and ref["max_abs_logit_diff"] == 0
    ort = by_runtime["onnxruntime"]["vs_reference"]
    # the float ONNX export passed a parity check, so it must agree with PyTorch here too
    assert ort["max_abs_logit_diff"] < 1e-3 and ort["top1_agreement"] == 1.0 and ort["within_noise"]
    assert ort["speedup_vs_reference"]["1"] > 0
    assert data["device"]["cpu"]["model"] and data["device"]["executed_precisions"]


def test_report_files_and_manifest(tiny_report):
    run, report = tiny_report
    out = run / "bench"
    assert report.output_dir == out
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"][0]["key"] == report.results[0]["key"]
    assert (out / "accuracy_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and report.results[0]["label"] in html
    md = (out / "report.md").read_text()
    assert "| artifact |" in md and "PyTorch eager" in md
    stage = Manifest.load(run).stage("bench")
    assert stage["status"] == "complete"
    recorded = stage["artifacts"]["bench/report.json"]["sha256"]
    assert recorded == hashlib.sha256((out / "report.json").read_bytes()).hexdigest()
    assert not Manifest.load(run).verify()


def test_memory_probe_subprocess(run):
    report = benchmark(run, BenchConfig(**{**FAST, "memory": True, "batch_sizes": (1,), "runtimes": ("onnxruntime",),
                                           "accuracy": False}), progress=False)
    (res,) = report.results
    mem = res["memory"]
    assert "error" not in mem, mem
    # the delta is the artifact's own: positive, and far below the pytest process it was started from
    assert mem["peak_rss_mb"] > mem["runtime_import_rss_mb"] > 0 and mem["model_peak_delta_mb"] > 0
    assert res["accuracy"] is None and res["vs_reference"] is None


def test_loose_artifact(run, tmp_path):
    report = benchmark([run / "onnx" / "model.onnx"], BenchConfig(**{**FAST, "batch_sizes": (1,)}), progress=False)
    (res,) = report.results
    assert res["runtime"] == "onnxruntime" and res["key"] == "onnx/model.onnx" and res["status"] == "ok"
    # without the torch checkpoint, the FP32 ONNX is the reference
    assert report.data["reference"] == res["label"]
    with pytest.raises(ConfigError, match="runtime"):
        benchmark([run / "edgetl.json"], BenchConfig(**FAST), progress=False)
    stray = tmp_path / "elsewhere" / "model.onnx"
    stray.parent.mkdir()
    shutil.copy(run / "onnx" / "model.onnx", stray)
    with pytest.raises(RunFolderError, match="not inside a run folder"):
        benchmark([stray], BenchConfig(**FAST), progress=False)


def _record(run: Path, rel: str, content: bytes, **entry) -> None:
    """Record a file as if a build stage had made it (one stage per file)."""
    path = run / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    manifest = Manifest.load(run)
    stage = f"fake-{rel.split('/')[0]}"
    manifest.begin(stage, {})
    manifest.add_artifact(stage, path, **entry)
    manifest.finish(stage)


def test_missing_runtime_skipped_and_broken_artifact_failed(run):
    """Neither stops the others: a missing runtime is skipped, an unloadable file fails, both with reasons."""
    trt_missing = importlib.util.find_spec("tensorrt") is None
    _record(run, "nvidia-gpu/model.engine", b"\0" * 64, runtime="tensorrt", precision="fp16", format="tensorrt-engine")
    _record(run, "broken/model.onnx", b"this is not onnx", runtime="onnxruntime", precision="fp32", format="onnx")
    report = benchmark(run, BenchConfig(**{**FAST, "batch_sizes": (1,), "runtimes": ("onnxruntime", "tensorrt")}),
                       progress=False)
    by_key = {r["key"]: r for r in report.results}
    engine = by_key["nvidia-gpu/model.engine"]
    if trt_missing:
        assert engine["status"] == "skipped" and "edgetl[tensorrt]" in engine["reason"]
    else:
        assert engine["status"] == "failed"
    broken = by_key["broken/model.onnx"]
    assert broken["status"] == "failed" and broken["reason"]
    assert by_key["onnx/model.onnx"]["status"] == "ok" and by_key["onnx/model.onnx"]["latency"]
    md = (run / "bench" / "report.md").read_text()
    assert "broken/model.onnx" in md and ("skipped" in md or not trt_missing)


def test_val_folder_with_other_classes(run, tmp_path):
    from conftest import make_image_folder

    other = make_image_folder(tmp_path / "other", classes=("cats", "dogs"), per_class=3)
    with pytest.raises(DatasetError, match="classes differ"):
        benchmark(run, BenchConfig(**{**FAST, "data": str(other)}), progress=False)


def test_empty_folder(run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        benchmark(run, BenchConfig(**{**FAST, "data": str(tmp_path / "empty")}), progress=False)


def test_batch_larger_than_data(run):
    with pytest.raises(ConfigError, match="larger than the .* evaluation images"):
        benchmark(run, BenchConfig(**{**FAST, "batch_sizes": (1, 4096)}), progress=False)
    assert Manifest.load(run).stage("bench") is None  # nothing recorded for a rejected config


def test_limit_is_class_balanced(run):
    report = benchmark(run, BenchConfig(**{**FAST, "batch_sizes": (1,), "limit": 3,
                                                           "runtimes": ("onnxruntime",)}), progress=False)
    acc = report.results[0]["accuracy"]
    assert acc["samples"] == 3 and all(v is not None for v in acc["per_class"].values())


# -- comparison -------------------------------------------------------------------------------------
def _scaled(report: dict, factor: float) -> dict:
    old = copy.deepcopy(report)
    for res in old["results"]:
        for stat in res["latency"]:
            stat["p50_stable_ms"] *= factor
    return old


def test_compare_reports(tiny_report):
    _, report = tiny_report
    faster_before = compare_reports(_scaled(report.data, 0.5), report.data, fail_pct=10)
    assert faster_before["rows"] and all(r["regression"] and r["change_pct"] == pytest.approx(100.0)
                                         for r in faster_before["rows"])
    slower_before = compare_reports(_scaled(report.data, 2.0), report.data, fail_pct=10)
    assert all(not r["regression"] and r["change_pct"] == pytest.approx(-50.0) for r in slower_before["rows"])


def test_fail_on_regression_raises_after_writing(run, tmp_path, tiny_report):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_scaled(tiny_report[1].data, 1e-6)))
    config = BenchConfig(**{**FAST, "batch_sizes": (1,), "compare": str(old), "fail_on_regression": 5.0,
                             "runtimes": ("onnxruntime",), "accuracy": False})
    with pytest.raises(RegressionError, match=r"latency regression\(s\) beyond 5.0%: worst .* ms \(\+") as info:
        benchmark(run, config, progress=False)
    assert info.value.exit_code == 3 and info.value.report.regressions
    assert json.loads((run / "bench" / "report.json").read_text())["comparison"]["rows"]


def test_compare_rejects_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not an edgetl bench report"):
        bench.load_report(bad)


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_bench_and_regression_exit(run, tmp_path):
    args = ["bench", str(run), "--batch", "1", "--warmup", "1", "--iterations", "3", "--rounds", "1",
            "--round-time", "0.2", "--no-memory", "--runtime", "onnxruntime"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime FP32" in result.output and "report.json" in result.output
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_scaled(json.loads((run / "bench" / "report.json").read_text()), 1e-6)))
    result = CliRunner().invoke(cli, [*args, "--compare", str(old), "--fail-on-regression", "10"])
    assert result.exit_code == 3, result.output
    assert "regression" in result.output


def test_cli_bad_batch(run):
    result = CliRunner().invoke(cli, ["bench", str(run), "--batch", "1,x"])
    assert result.exit_code == 1 and "error: --batch" in result.output


# -- OpenVINO (two runs of an FP32 IR: default hint and true FP32) ----------------------------------------
@pytest.mark.openvino
def test_openvino_fp32_ir_measured_twice(run):
    pytest.importorskip("openvino")
    from edgetl.backends.openvino import convert_onnx, save_ir

    xml = run / "intel-cpu" / "fp32" / "model.xml"
    xml.parent.mkdir(parents=True)
    save_ir(convert_onnx(run / "onnx" / "model.onnx"), xml)
    manifest = Manifest.load(run)
    manifest.begin("intel-cpu", {})
    manifest.add_artifact("intel-cpu", xml.parent, runtime="openvino", precision="fp32", format="openvino-ir")
    manifest.finish("intel-cpu")
    report = benchmark(run, BenchConfig(**{**FAST, "batch_sizes": (1,), "runtimes": ("onnxruntime", "openvino")}),
                       progress=False)
    ov = [r for r in report.results if r["runtime"] == "openvino"]
    assert [r["variant"] for r in ov] == ["default", "f32-hint"]
    assert all(r["status"] == "ok" for r in ov), [r["reason"] for r in ov]
    true_fp32 = ov[1]
    assert true_fp32["precision_executed"] == "fp32" and true_fp32["runner"]["extra"]["inference_precision_hint"] == "fp32"
    assert true_fp32["vs_reference"]["max_abs_logit_diff"] < 1e-3
    assert true_fp32["size_bytes"] > 0 and true_fp32["key"].endswith("model.xml#f32-hint")


def test_two_runs_in_one_table_with_run_qualified_keys(tiny_run: Path, tmp_path: Path):
    """A model and its derived run (here: a copy standing in for a pruned child) side by side."""
    import shutil

    child = tmp_path / "child"
    shutil.copytree(tiny_run, child, ignore=shutil.ignore_patterns(".locks", "bench"))
    report = benchmark([tiny_run, child], BenchConfig(rounds=1, iterations=2, memory=False,
                                                     output=str(tmp_path / "out"), runtimes=("torch", "onnxruntime")))
    keys = [r["key"] for r in report.results]
    assert keys == [f"{tiny_run.name}/checkpoint.pt", f"{tiny_run.name}/onnx/model.onnx",
                    "child/checkpoint.pt", "child/onnx/model.onnx"]
    assert len({r["label"] for r in report.results}) == 4 and report.results[2]["label"].startswith("child: ")
    assert all(r["status"] == "ok" for r in report.results)
    assert report.data["reference"] == report.results[0]["label"]  # the first run's float model
    assert (tmp_path / "out" / "report.json").is_file()


# -- which errors mark an artifact failed -------------------------------------------------------------------
def _static_batch_onnx(size: int) -> bytes:
    """A valid ONNX model for the 3-class tiny run (scores: the mean of each colour channel) that takes exactly
    one image: ONNX Runtime itself rejects any other batch."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["y"])],
        "static", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_runtime_errors_fail_their_artifact_and_the_others_get_numbers(run):
    """A damaged file (sha256 check bypassed) and ONNX Runtime's own error at inference each fail one artifact."""
    size = Manifest.load(run).preprocessing["input_size"]
    _record(run, "static/model.onnx", _static_batch_onnx(size), runtime="onnxruntime", precision="fp32",
            format="onnx")
    (run / "onnx" / "model.onnx").write_bytes(b"damaged after export")
    report = benchmark(run, BenchConfig(**{**FAST, "batch_sizes": (1,), "verify": False}), progress=False)
    by_key = {r["key"]: r for r in report.results}
    assert by_key["onnx/model.onnx"]["status"] == "failed" and "ONNX" in by_key["onnx/model.onnx"]["reason"]
    static = by_key["static/model.onnx"]  # loads and passes the one-image check; ORT rejects the accuracy batch
    assert static["status"] == "failed" and static["reason"].startswith("InvalidArgument"), static["reason"]
    torch_row = by_key["checkpoint.pt"]
    assert torch_row["status"] == "ok" and torch_row["latency"] and torch_row["accuracy"]
    assert report.data["reference"] == torch_row["label"]


@pytest.mark.parametrize("phase", ["load", "accuracy pass"])
def test_a_bug_in_edgetl_code_keeps_its_traceback(run, monkeypatch, phase):
    """A TypeError/AttributeError raised by edgetl's own runner code is a bug, never a "failed" row."""
    from edgetl.backends.onnxruntime import OnnxRuntimeRunner

    real_load, real_infer = OnnxRuntimeRunner._load_impl, OnnxRuntimeRunner._infer_impl
    calls = []

    def load(self):
        real_load(self)
        if phase == "load":
            self.session = None  # describe() then calls None.get_providers() in edgetl's runner

    def infer(self, batch):
        calls.append(len(batch))
        if phase == "accuracy pass" and len(calls) == 2:  # after the one-image check at load
            self.input_name = [self.input_name]  # a list as a dict key in edgetl's _infer_impl
        return real_infer(self, batch)

    monkeypatch.setattr(OnnxRuntimeRunner, "_load_impl", load)
    monkeypatch.setattr(OnnxRuntimeRunner, "_infer_impl", infer)
    error, match = (AttributeError, "get_providers") if phase == "load" else (TypeError, "unhashable type: 'list'")
    with pytest.raises(error, match=match) as info:
        benchmark(run, BenchConfig(**{**FAST, "batch_sizes": (1,), "runtimes": ("onnxruntime",)}), progress=False)
    assert info.traceback[-1].frame.f_globals["__name__"] == "edgetl.backends.onnxruntime"


def test_is_edgetl_bug():
    from edgetl.bench import is_edgetl_bug

    with pytest.raises(KeyError, match="results") as in_edgetl:
        compare_reports({}, {})  # a KeyError raised in edgetl.bench.compare
    with pytest.raises(KeyError, match="results") as elsewhere:
        {}["results"]
    with pytest.raises(ConfigError, match="--batch takes") as ours:
        bench.parse_batch_sizes("x")
    assert is_edgetl_bug(in_edgetl.value)
    assert not is_edgetl_bug(elsewhere.value) and not is_edgetl_bug(ours.value)
