"""The runtime's bench: edgetl bench's measuring and report schema, readable by `edgetl bench --compare`."""

from __future__ import annotations

import json

from edgetl.bench.compare import compare_reports, load_report
from edgetl.runtime.cli import main

FAST = ["--rounds", "1", "--iterations", "3", "--warmup", "1"]


def test_bench_report_is_a_bench_report(onnx_bundle, colour_images, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["bench", str(onnx_bundle), "--data", str(colour_images), "-o", str(out), "--batch", "1,2", *FAST]) == 0
    assert "p50" in capsys.readouterr().out
    report = load_report(out)  # what `edgetl bench --compare` reads, with its checks
    (row,) = report["results"]
    assert row["key"] == "onnx/model.onnx" and row["status"] == "ok"
    assert [s["batch"] for s in row["latency"]] == [1, 2] and row["latency"][0]["runs"] == 3
    assert row["accuracy"]["top1"] == 1.0 and report["data"]["images"] == 8
    assert report["device"]["cpu"]["model"] and report["bundle"]["model_sha256"]
    comparison = compare_reports(report, json.loads(out.read_text()))
    assert [r["key"] for r in comparison["rows"]] == ["onnx/model.onnx"] * 2


def test_bench_without_data_times_synthetic_images(onnx_bundle, tmp_path):
    out = tmp_path / "r.json"
    assert main(["bench", str(onnx_bundle), "-o", str(out), *FAST]) == 0
    report = load_report(out)
    assert report["results"][0]["accuracy"] is None and "synthetic" in report["data"]["source"]


def test_bench_report_replaces_only_a_bench_report(onnx_bundle, tmp_path, capsys):
    """`python -m edgetl.runtime bench -o FILE` used to overwrite any file; now only its own reports."""
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    assert main(["bench", str(onnx_bundle), "-o", str(mine), *FAST]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an edgetl bench report" in err[0]
    assert mine.read_text() == '{"my": "notes"}'
    out = tmp_path / "report.json"
    assert main(["bench", str(onnx_bundle), "-o", str(out), *FAST]) == 0
    assert main(["bench", str(onnx_bundle), "-o", str(out), *FAST]) == 0  # its own report: a rerun replaces it
    assert load_report(out)["kind"] == "edgetl.bench"
