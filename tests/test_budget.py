"""A build that misses its accuracy budget, end to end: recorded budget-missed, one line on stderr with the
figure, `edgetl status` exits non-zero, every bench table marks it, `edgetl package` refuses it unless
--allow-budget-miss (and bundle.json says it missed). The budget is the target profile's: no flag given."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bench import BenchConfig, benchmark
from edgetl.build import TargetBuildConfig, build_target
from edgetl.cli import cli
from edgetl.errors import AccuracyBudgetError
from edgetl.manifest import Manifest

pytestmark = pytest.mark.openvino
BENCH = dict(batch_sizes=(1,), warmup=1, iterations=3, rounds=1, round_time_s=0.3, min_iterations=2, memory=False,
             bootstrap=100)


@pytest.fixture(scope="module")
def missed_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run with an intel-cpu INT8 build that missed the profile's budget: the float reference is pinned
    at 100% top-1 (the tiny model scores far less), plain PTQ only (no fallback), so the miss is certain."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("budget") / "run"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("edgetl.build.checkpoint_top1", lambda *a, **k: 1.0)
        with pytest.raises(AccuracyBudgetError):
            build_target(run, TargetBuildConfig(precision="int8", calib_size=8, accuracy_control=False, qat=False,
                                                latency_runs=2, sensitivity_images=0))
    return run


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_miss_is_recorded_with_its_figures(missed_run: Path):
    record = Manifest.load(missed_run).record("intel-cpu:int8")
    assert record.status == "budget-missed"
    m = record.metrics
    assert m["max_drop"] == 1.0 and m["budget_source"] == "target intel-cpu" and m["method"] == "ptq"
    assert m["drop_points"] == pytest.approx(100 * (1.0 - m["top1"]), abs=1e-3) and m["drop_points"] > 1.0
    build_json = json.loads((missed_run / "intel-cpu" / "int8" / "build.json").read_text())
    assert build_json["metrics"]["method"] == "ptq" and build_json["metrics"]["calibration"].startswith("nncf")


def test_cli_says_so_in_one_line_and_exits_non_zero(tiny_run: Path, tmp_path: Path, monkeypatch):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    monkeypatch.setattr("edgetl.build.checkpoint_top1", lambda *a, **k: 1.0)
    result = invoke("export", run, "--target", "intel-cpu", "--precision", "int8", "--no-accuracy-control",
                    "--no-qat", "--latency-runs", 2, "--sensitivity-images", 0, "--calib-size", 8)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missed its accuracy budget" in errors[0]
    assert "exceeds a budget of 1 point (target intel-cpu)" in errors[0] and "--allow-budget-miss" in errors[0]


def test_status_exits_non_zero_and_names_the_miss(missed_run: Path):
    result = invoke("status", missed_run, "--json")
    assert result.exit_code == 4
    states = {s["stage"]: s for s in json.loads(result.output)}
    assert states["intel-cpu:int8"]["state"] == "budget-missed"
    assert "> budget 1" in states["intel-cpu:int8"]["detail"]
    assert {s["state"] for name, s in states.items() if name != "intel-cpu:int8"} == {"current"}


def test_bench_marks_the_build_in_every_table(missed_run: Path):
    report = benchmark(missed_run, BenchConfig(**BENCH, runtimes=("openvino", "torch")), progress=False)
    rows = {r["key"]: r for r in report.results}
    row = rows["intel-cpu/int8/model.xml"]
    assert row["label"].endswith("[budget-missed]") and row["build"]["budget_met"] is False
    assert row["build"]["max_drop"] == 1.0 and row["build"]["method"] == "ptq"
    assert "[budget-missed]" not in rows["checkpoint.pt"]["label"] and rows["checkpoint.pt"]["build"] is None
    note = next(n for n in report.data["notes"] if n.startswith(row["label"]))
    assert "of 1 pts (built budget-missed)" in note
    markdown = (missed_run / "bench" / "report.md").read_text()
    assert row["label"] in markdown


def test_package_refuses_it_unless_allowed(missed_run: Path, tmp_path: Path):
    refused = invoke("package", missed_run, "--target", "intel-cpu", "-o", tmp_path / "b.tar.gz")
    assert refused.exit_code == 1 and "missed its accuracy budget" in refused.output
    assert "--allow-budget-miss" in refused.output and not (tmp_path / "b.tar.gz").exists()
    allowed = invoke("package", missed_run, "--target", "intel-cpu", "-o", tmp_path / "b.tar.gz",
                     "--allow-budget-miss")
    assert allowed.exit_code == 0, allowed.output
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/bundle.json"))
        meta = json.load(tar.extractfile(member))
    assert meta["budget"]["met"] is False and meta["budget"]["max_drop"] == 1.0
    assert meta["budget"]["drop_points"] > 1.0


def test_bench_command_prints_the_mark_in_its_notes(missed_run: Path, tmp_path: Path):
    """The terminal notes keep the label's [budget-missed] (printed as text, not as console markup)."""
    result = invoke("bench", missed_run, "--runtime", "openvino", "--runtime", "torch", "--warmup", 1, "--iterations", 3,
                    "--rounds", 1, "--round-time", 0.3, "--min-iterations", 2, "--no-memory", "--bootstrap", 100,
                    "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.strip().startswith("note:")]
    assert any("OpenVINO INT8 [budget-missed]: top-1 drop" in line and "(built budget-missed)" in line for line in notes), notes
