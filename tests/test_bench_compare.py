"""``bench --compare FILE``: a bad FILE is a one-line ConfigError, raised before anything is measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgetl.bench import SCHEMA_VERSION, BenchConfig, benchmark, harness, load_report
from edgetl.errors import ConfigError

FAST = dict(batch_sizes=(1,), warmup=1, iterations=3, rounds=1, round_time_s=0.2, min_iterations=2, memory=False,
            bootstrap=50, runtimes=("onnxruntime",), accuracy=False)
HEADER = {"kind": "edgetl.bench", "schema_version": SCHEMA_VERSION}
GOOD_RESULT = {"key": "onnxruntime:model.onnx", "label": "ONNX Runtime FP32",
               "latency": [{"batch": 1, "p50_stable_ms": 1.5}], "accuracy": {"top1": 0.9}}


def _write(tmp_path: Path, data, name: str = "old.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("data, reason", [
    ([1, 2], "top level is a JSON array"),
    ("\"report\"", "top level is a JSON string"),
    ({}, "not an edgetl bench report"),
    (HEADER, "no \"results\" list"),
    ({**HEADER, "results": {"a": 1}}, "no \"results\" list"),
    ({**HEADER, "results": [GOOD_RESULT, 3]}, r"results\[1\] is not an object with a \"key\""),
    ({**HEADER, "results": [{"label": "x"}]}, r"results\[0\] is not an object with a \"key\""),
    ({**HEADER, "results": [{**GOOD_RESULT, "latency": {"batch": 1}}]}, r"results\[0\] .*latency"),
    ({**HEADER, "results": [{**GOOD_RESULT, "latency": [{"batch": 1}]}]}, r"results\[0\] .*latency"),
    ({**HEADER, "results": [{**GOOD_RESULT, "latency": [{"batch": 1, "p50_stable_ms": 0}]}]}, "latency"),
    ({**HEADER, "results": [{**GOOD_RESULT, "accuracy": [0.9]}]}, r"results\[0\] .*accuracy"),
    ({**HEADER, "results": [GOOD_RESULT], "device": "my laptop"}, "\"device\""),
    ({**HEADER, "results": [GOOD_RESULT], "device": {"cpu": None}}, "\"device\""),
], ids=["list", "string", "empty-object", "no-results", "results-object", "result-not-object", "result-no-key",
        "latency-object", "latency-no-p50", "latency-zero", "accuracy-list", "device-string", "device-cpu-null"])
def test_load_report_rejects_malformed_reports_in_one_line(tmp_path, data, reason):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=reason) as info:
        load_report(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["{\"kind\": ", "not json at all", b"\xff\xfe\x00garbage"],
                         ids=["truncated", "text", "binary"])
def test_load_report_rejects_files_that_are_not_json(tmp_path, content):
    path = tmp_path / "old.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_report(path)


def test_load_report_accepts_a_well_formed_report(tmp_path):
    data = {**HEADER, "results": [GOOD_RESULT, {"key": "b", "label": "B"}], "device": {"cpu": {"model": "x"}}}
    assert load_report(_write(tmp_path, data)) == data


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (bench writes into the run folder and its manifest)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.mark.parametrize("content", ["[]", "{\"kind\": \"edgetl.bench\"", None], ids=["list", "invalid", "missing"])
def test_bad_compare_file_fails_before_measuring(run, tmp_path, monkeypatch, content):
    def measure(*args, **kwargs):
        pytest.fail("benchmark measured before checking the --compare file")

    monkeypatch.setattr(harness, "measure_report", measure)
    old = tmp_path / "old.json"
    if content is not None:
        old.write_text(content)
    with pytest.raises(ConfigError, match=str(old)):
        benchmark(run, BenchConfig(**FAST, compare=str(old)), progress=False)
    assert not (run / "bench").exists()


def test_compare_file_is_read_once_before_measuring(run, tmp_path, monkeypatch):
    old = Path(shutil.copy(benchmark(run, BenchConfig(**FAST), progress=False).files["json"], tmp_path / "old.json"))
    calls = []
    real_load, real_measure = harness.load_report, harness.measure_report
    monkeypatch.setattr(harness, "load_report", lambda path: calls.append("load") or real_load(path))
    monkeypatch.setattr(harness, "measure_report", lambda *a, **k: calls.append("measure") or real_measure(*a, **k))
    report = benchmark(run, BenchConfig(**FAST, compare=str(old)), progress=False)
    assert calls == ["load", "measure"]  # a real report passes the checks, and is read once, first
    comparison = report.data["comparison"]
    assert comparison["old_created"] == json.loads(old.read_text())["created"] and comparison["rows"]
