"""The run folder as a contract, through the command line: nothing lost, nothing stale, nothing trusted blindly.

Each test reproduces a defect of edgetl 0.1 with the commands a user types (issue 7) and checks the new outcome.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import cli

from conftest import make_image_folder

TINY = ["--model", "mobilenet_v3_small", "--no-pretrained", "--image-size", "32", "--epochs", "2", "--workers", "0"]
# a model that keeps improving when resumed (pretrained features): resuming rewrites checkpoint.pt
LEARNER = ["--image-size", "32", "--workers", "0", "--strategy", "linear-probe", "--batch-size", "8"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def manifest(run: Path) -> dict:
    return json.loads((run / "edgetl.json").read_text())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two tiny runs (3 and 2 classes) exported to ONNX, the first also built for intel-cpu fp32."""
    base = tmp_path_factory.mktemp("contract")
    make_image_folder(base / "data3", classes=("cats", "dogs", "birds"), per_class=8)
    make_image_folder(base / "data2", classes=("cats", "dogs"), per_class=8)
    for data, run in (("data3", "run3"), ("data2", "run2")):
        code, out = invoke("finetune", base / data, *TINY, "-o", base / run)
        assert code == 0, out
        code, out = invoke("export", base / run)
        assert code == 0, out
    return base


@pytest.fixture
def run3(runs: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run3"
    shutil.copytree(runs / "run3", copy, ignore=shutil.ignore_patterns(".locks"))
    return copy


# -- 1. --overwrite deletes any folder ------------------------------------------------------------------
def test_overwrite_refuses_a_folder_that_is_not_a_run(runs: Path, tmp_path: Path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    code, out = invoke("finetune", runs / "data2", *TINY, "-o", keep, "--overwrite")
    assert code == 1 and "not an edgetl run folder" in error_lines(out)[0]
    assert (keep / "notes.txt").read_text() == "precious"


def test_overwrite_never_deletes_the_dataset(runs: Path, tmp_path: Path):
    data = make_image_folder(tmp_path / "copy", per_class=4)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    code, out = invoke("finetune", data, *TINY, "-o", data, "--overwrite")
    assert code == 1 and "holds the dataset" in error_lines(out)[0]
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_overwrite_replaces_a_run_only_when_the_new_one_exists(runs: Path, run3: Path):
    old = digest(run3 / "checkpoint.pt")
    code, out = invoke("finetune", runs / "data2", *TINY, "-o", run3, "--overwrite")
    assert code == 0, out
    assert manifest(run3)["classes"] == ["cats", "dogs"] and digest(run3 / "checkpoint.pt") != old
    assert not [p for p in run3.parent.iterdir() if p.name.startswith(".edgetl-")]  # no staging leftovers


# -- 2. recorded sha256s are never checked ------------------------------------------------------------------
def test_export_refuses_a_checkpoint_from_another_run(runs: Path, run3: Path):
    shutil.copyfile(runs / "run2" / "checkpoint.pt", run3 / "checkpoint.pt")
    onnx_before = digest(run3 / "onnx" / "model.onnx")
    code, out = invoke("export", run3)
    assert code == 1, out
    assert len(error_lines(out)) == 1 and "checkpoint.pt does not match the sha256" in out
    assert digest(run3 / "onnx" / "model.onnx") == onnx_before
    # opting out of the checksum still refuses a checkpoint of another model/class set
    code, out = invoke("export", run3, "--no-verify")
    assert code == 1 and "belongs to another run" in error_lines(out)[0]


@pytest.mark.openvino
def test_bench_refuses_a_damaged_ir(run3: Path):
    pytest.importorskip("openvino")
    code, out = invoke("export", run3, "--target", "intel-cpu", "--precision", "fp32")
    assert code == 0, out
    weights = run3 / "intel-cpu" / "fp32" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[:65536] = bytes(255 - b for b in data[:65536])
    weights.write_bytes(bytes(data))
    code, out = invoke("bench", run3, "--rounds", "1", "--iterations", "2", "--no-memory")
    assert code == 1 and "intel-cpu/fp32/model.bin does not match the sha256" in error_lines(out)[0]
    assert "export" in error_lines(out)[0] and "--target intel-cpu --precision fp32" in error_lines(out)[0]


@pytest.mark.openvino
def test_target_build_refuses_an_onnx_from_another_run(runs: Path, run3: Path):
    pytest.importorskip("openvino")
    shutil.copyfile(runs / "run2" / "onnx" / "model.onnx", run3 / "onnx" / "model.onnx")
    code, out = invoke("export", run3, "--target", "intel-cpu", "--precision", "fp32")
    assert code == 1 and "onnx/model.onnx does not match the sha256" in error_lines(out)[0]
    assert "intel-cpu:fp32" not in manifest(run3)["stages"]


# -- 3. derived artifacts go stale silently -------------------------------------------------------------------
@pytest.mark.openvino
def test_retraining_makes_onnx_and_ir_stale(tmp_path: Path):
    pytest.importorskip("openvino")
    data = make_image_folder(tmp_path / "data", classes=("cats", "dogs", "birds"), per_class=10)
    run = tmp_path / "run"
    assert invoke("finetune", data, *LEARNER, "--epochs", "1", "-o", run)[0] == 0
    assert invoke("export", run)[0] == 0
    assert invoke("export", run, "--target", "intel-cpu", "--precision", "fp32")[0] == 0
    checkpoint = digest(run / "checkpoint.pt")
    code, out = invoke("finetune", "--resume", run, "--epochs", "5")
    assert code == 0, out
    assert digest(run / "checkpoint.pt") != checkpoint, "precondition: resuming found a better model"

    code, out = invoke("status", run)
    assert code == 4
    states = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert states == {"finetune": "current", "onnx": "stale", "intel-cpu:fp32": "stale"}

    code, out = invoke("bench", run, "--rounds", "1", "--iterations", "2", "--no-memory", "--runtime", "onnxruntime")
    assert code == 0, out
    report = json.loads((run / "bench" / "report.json").read_text())
    assert [bool(r["stale"]) for r in report["results"]] == [True]
    assert any("is stale" in note for note in report["notes"]) and "[stale]" in report["results"][0]["label"]

    code, out = invoke("export", run, "--target", "intel-cpu", "--precision", "fp32")
    assert code == 0 and "stale" in out and "exporting it again" in out
    code, out = invoke("status", run)  # rebuilt: only the bench now describes older artifacts
    states = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert code == 4 and states == {"finetune": "current", "onnx": "current", "intel-cpu:fp32": "current",
                                    "bench": "stale"}


# -- 7. --resume and --epochs ---------------------------------------------------------------------------------------
def test_resume_honours_epochs_and_refuses_fixed_options(run3: Path):
    code, out = invoke("finetune", "--resume", run3, "--epochs", "2")
    assert code == 1 and "--epochs must be more than 2" in error_lines(out)[0]
    code, out = invoke("finetune", "--resume", run3, "--epochs", "10", "--lr", "0.5")
    assert code == 1 and "--lr cannot change when resuming" in error_lines(out)[0]
    assert manifest(run3)["stages"]["finetune"]["options"]["epochs"] == 2
    code, out = invoke("finetune", "--resume", run3, "--epochs", "10", "--patience", "1")
    assert code == 0, out
    stage = manifest(run3)["stages"]["finetune"]
    assert stage["options"]["epochs"] == 10 and stage["metrics"]["epochs_run"] > 2  # 10 is no longer ignored


# -- 13. one line, not a traceback ----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,message", [
    (lambda m: [], "not an object"),
    (lambda m: {k: v for k, v in m.items() if k != "stages"}, "'stages' is missing"),
    (lambda m: {k: v for k, v in m.items() if k != "classes"}, "'classes' is missing"),
    (lambda m: {k: v for k, v in m.items() if k != "preprocessing"}, "'preprocessing' is missing"),
    (lambda m: {**m, "stages": {**m["stages"], "onnx": {**m["stages"]["onnx"],
                                                       "artifacts": {"../../etc/passwd": {"sha256": "0"}}}}},
     "outside the run folder"),
])
def test_damaged_manifest_is_one_line(run3: Path, damage, message):
    (run3 / "edgetl.json").write_text(json.dumps(damage(manifest(run3))))
    code, out = invoke("export", run3)
    assert code == 1 and len(error_lines(out)) == 1 and message in error_lines(out)[0], out


def test_damaged_checkpoint_is_one_line_without_unsafe_advice(run3: Path):
    path = run3 / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    code, out = invoke("export", run3, "--no-verify")
    assert code == 1 and "cannot be read as an edgetl checkpoint" in error_lines(out)[0]
    assert "weights_only" not in out


def test_output_that_is_a_file_is_one_line(runs: Path, tmp_path: Path):
    target = tmp_path / "afile"
    target.write_text("x")
    code, out = invoke("finetune", runs / "data2", *TINY, "-o", target)
    assert code == 1 and "is a file" in error_lines(out)[0]


# -- 14. an unknown target is rejected before any work ---------------------------------------------------------------
def test_unknown_target_fails_before_exporting(runs: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(runs / "run2", run, ignore=shutil.ignore_patterns(".locks", "onnx"))
    stages = manifest(run)
    stages["stages"].pop("onnx")
    (run / "edgetl.json").write_text(json.dumps(stages))
    code, out = invoke("export", run, "--target", "nosuch")
    assert code == 1 and "unknown target 'nosuch'" in error_lines(out)[0]
    assert not (run / "onnx").exists() and "onnx" not in manifest(run)["stages"]
