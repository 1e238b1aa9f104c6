"""build_target and `edgetl export --target`: OpenVINO IR for intel-cpu, end to end on the tiny run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image_folder

from edgetl.build import BUDGET_MISSED, TargetBuildConfig, build_target
from edgetl.errors import (
    AccuracyBudgetError,
    ConfigError,
    DatasetError,
    MissingBackendError,
    RunFolderError,
    TargetError,
)
from edgetl.manifest import Manifest

pytestmark = pytest.mark.openvino
FAST = {"latency_runs": 5, "sensitivity_images": 4}


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (builds write into it)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture
def learned_run(learned_base, tmp_path) -> Path:
    return Path(shutil.copytree(learned_base, tmp_path / "learned"))


def _stage(run: Path, name: str) -> dict:
    return json.loads((run / "edgetl.json").read_text())["stages"][name]


def _eval_images(run: Path) -> tuple[np.ndarray, np.ndarray]:
    from edgetl.data import load_array, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec

    manifest = Manifest.load(run)
    return load_array(run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.data["preprocessing"]))


def _logits(runtime: str, artifact: Path, images: np.ndarray, **options) -> np.ndarray:
    """Logits at batch 1 (as the build measures top-1), computed here rather than by edgetl.build."""
    from edgetl.backends import create_runner

    with create_runner(runtime, artifact, **options) as runner:
        return np.concatenate([runner.infer(images[i:i + 1]) for i in range(len(images))])


def _margin(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def test_int8_build_writes_ir_and_records_it(learned_run):
    run = learned_run
    result = build_target(run, TargetBuildConfig(precision="int8", calib_size=9, **FAST))
    folder = run / "intel-cpu" / "int8"
    assert result.path == folder / "model.xml" and result.stage == "intel-cpu:int8"
    assert {p.name for p in folder.iterdir()} == {"model.xml", "model.bin", "sensitivity.json", "build.json"}
    stage = _stage(run, "intel-cpu:int8")
    assert stage["status"] == "complete"
    ir = stage["artifacts"]["intel-cpu/int8/model.xml"]
    assert (ir["runtime"], ir["precision"], ir["format"]) == ("openvino", "int8", "openvino-ir")
    assert len(ir["sha256"]) == 64 and "intel-cpu/int8/model.bin" in stage["artifacts"]
    m = stage["metrics"]
    assert m["executed_precision"].startswith("int8") and m["calib_images"] == 9
    # the recorded accuracies are those of the files as saved, recomputed here without edgetl.build
    images, labels = _eval_images(run)
    float_top1 = float(np.mean(_logits("torch", run / "checkpoint.pt", images).argmax(1) == labels))
    int8_top1 = float(np.mean(_logits("openvino", folder / "model.xml", images, **ir["runner_options"]).argmax(1)
                              == labels))
    assert (m["float_top1"], m["top1"], m["val_images"]) == (float_top1, int8_top1, len(labels))
    assert m["drop_points"] == pytest.approx(100 * (float_top1 - int8_top1), abs=1e-3)
    assert m["latency_p50_ms"] > 0 and m["val_images"] > 0
    sensitivity = json.loads((folder / "sensitivity.json").read_text())
    assert sensitivity["images"] == 4 and sensitivity["layers"]
    assert Manifest.load(run).verify() == []
    assert not list((run / "intel-cpu").glob(".*"))  # no staging leftovers


def test_fp32_is_true_fp32_and_fp16_has_fp16_weights(learned_run):
    run = learned_run
    fp32 = build_target(run, TargetBuildConfig(precision="fp32", **FAST))
    assert fp32.metrics["executed_precision"] == "fp32"
    fp32_options = _stage(run, "intel-cpu:fp32")["artifacts"]["intel-cpu/fp32/model.xml"]["runner_options"]
    assert fp32_options["precision_hint"] == "f32"
    fp16 = build_target(run, TargetBuildConfig(precision="fp16", **FAST))
    meta = json.loads((run / "intel-cpu" / "fp16" / "build.json").read_text())
    assert meta["runner"]["extra"]["model_precision"] == "fp16"
    assert (run / "intel-cpu" / "fp16" / "model.bin").stat().st_size < \
        0.6 * (run / "intel-cpu" / "fp32" / "model.bin").stat().st_size

    images, labels = _eval_images(run)
    reference = _logits("openvino", run / "intel-cpu" / "fp32" / "model.xml", images, **fp32_options)
    torch_logits = _logits("torch", run / "checkpoint.pt", images)
    np.testing.assert_allclose(reference, torch_logits, atol=1e-4)  # true FP32: the checkpoint's numbers
    assert np.ptp(reference, axis=0).max() > 0.01  # precondition: the logits depend on the image
    # Same FP32 compute, FP16 weight storage: rounding a weight to FP16 moves it by at most 2**-11 (0.05 %)
    # of itself; through this network that moves the logits by about 0.6 % of their largest magnitude.
    # 2 % leaves room for that and still fails for weights or compute in bf16 (2**-8: about 5 % here).
    weights_only = _logits("openvino", run / "intel-cpu" / "fp16" / "model.xml", images,
                           **{**fp32_options, "precision_hint": "f32"})
    diff, scale = float(np.abs(weights_only - reference).max()), float(np.abs(reference).max())
    assert 0 < diff <= 0.02 * scale, f"FP16 weights moved the logits by {diff:.3g} ({100 * diff / scale:.2f} %)"
    # a logit moved by at most `diff` cannot change the class of an image whose top-2 margin exceeds 2 * diff
    clear = _margin(reference) > 2 * diff
    assert clear.sum() >= 0.8 * len(labels)
    assert (weights_only.argmax(1) == reference.argmax(1))[clear].all()
    # the recorded top-1s are those of the files as built and run with their recorded options
    fp16_options = _stage(run, "intel-cpu:fp16")["artifacts"]["intel-cpu/fp16/model.xml"]["runner_options"]
    as_built = _logits("openvino", run / "intel-cpu" / "fp16" / "model.xml", images, **fp16_options)
    assert fp32.metrics["top1"] == float(np.mean(reference.argmax(1) == labels))
    assert fp16.metrics["top1"] == float(np.mean(as_built.argmax(1) == labels))


def test_budget_missed_keeps_best_model_and_raises(run, monkeypatch):
    """The float reference is pinned at 100% so the tiny model's real INT8 top-1 cannot meet the budget the
    target profile sets (no --max-drop given: a budget is always in force); PTQ, accuracy control, saving and
    recording all run for real."""
    import edgetl.build as build

    monkeypatch.setattr(build, "checkpoint_top1", lambda *a, **k: 1.0)
    with pytest.raises(AccuracyBudgetError, match=r"exceeds a budget of 1 point \(target intel-cpu\).*"
                                                  r"kept in .* as budget-missed"):
        build_target(run, TargetBuildConfig(precision="int8", calib_size=9, max_reverted_layers=1, qat=False, **FAST))
    stage = _stage(run, "intel-cpu:int8")
    assert stage["status"] == BUDGET_MISSED
    assert stage["metrics"]["max_drop"] == 1.0 and stage["metrics"]["budget_source"] == "target intel-cpu"
    assert "accuracy_control" in stage["metrics"] and stage["metrics"]["drop_points"] > 1.0
    assert (run / "intel-cpu" / "int8" / "model.xml").is_file()
    assert stage["artifacts"]["intel-cpu/int8/model.xml"]["runtime"] == "openvino"


def test_max_drop_none_turns_the_budget_off(run, monkeypatch):
    """The same pinned reference: with --max-drop none plain PTQ is kept as it is, no fallback runs."""
    import edgetl.build as build

    monkeypatch.setattr(build, "checkpoint_top1", lambda *a, **k: 1.0)
    result = build_target(run, TargetBuildConfig(precision="int8", calib_size=9, max_drop="none", **FAST))
    stage = _stage(run, "intel-cpu:int8")
    assert result.status == stage["status"] == "complete" and result.metrics["drop_points"] > 1.0
    assert stage["metrics"]["max_drop"] is None and stage["metrics"]["method"] == "ptq"
    assert "accuracy_control" not in stage["metrics"]


@pytest.mark.parametrize(("max_drop", "match"), [("some", "a number of top-1 points or 'none'"),
                                                 (101, r"in top-1 points \(0-100\), got 101")])
def test_bad_budgets_are_refused(max_drop, match):
    with pytest.raises(ConfigError, match=match):
        TargetBuildConfig(max_drop=max_drop)


def test_bad_runs_and_targets(tmp_path, run):
    with pytest.raises(RunFolderError, match="has no edgetl.json"):
        build_target(tmp_path, TargetBuildConfig(precision="fp32"))
    with pytest.raises(TargetError, match="unknown target 'jetson-nano'"):
        build_target(run, TargetBuildConfig(target="jetson-nano"))
    with pytest.raises(TargetError, match="does not serve precision 'int4'"):
        build_target(run, TargetBuildConfig(precision="int4"))
    with pytest.raises(ConfigError, match="calib_size"):
        TargetBuildConfig(calib_size=0)
    (run / "checkpoint.pt").unlink()
    with pytest.raises(RunFolderError, match="checkpoint.pt"):
        build_target(run, TargetBuildConfig(precision="fp32", **FAST))


def test_calibration_of_other_classes_fails_before_any_work(run, tmp_path):
    folder = make_image_folder(tmp_path / "calib", classes=("cats", "dogs", "horses"), per_class=2)
    with pytest.raises(DatasetError, match=r"^calibration data: .*extra \['horses'\]"):
        build_target(run, TargetBuildConfig(precision="int8", calib_data=str(folder), **FAST))
    assert "intel-cpu:int8" not in Manifest.load(run).stages


def test_missing_openvino_is_one_clear_error(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingBackendError, match=r"openvino is required .*pip install 'edgetl\[openvino\]'"):
        build_target(run, TargetBuildConfig(precision="fp32"))


def test_cli_export_target(run):
    from edgetl.cli import cli

    result = CliRunner().invoke(cli, ["export", str(run), "--target", "intel-cpu", "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert "intel-cpu/fp16/model.xml: top-1" in result.output and "drop" in result.output
    bad = CliRunner().invoke(cli, ["export", str(run), "--target", "intel-gpu"])
    assert bad.exit_code == 1 and "unknown target 'intel-gpu'" in bad.output
    assert "--max-drop" in CliRunner().invoke(cli, ["export", "--help"]).output


@pytest.mark.slow
def test_lite0_bad_calibration_misses_budget_for_real(lite0_run, tmp_path):
    """Flat grey calibration images give INT8 ranges that do not fit real photos: the budget is missed."""
    from PIL import Image

    classes = Manifest.load(lite0_run).classes
    for name in classes:
        (tmp_path / "grey" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "grey" / name / f"{i}.png")
    with pytest.raises(AccuracyBudgetError, match="budget-missed"):
        build_target(lite0_run, TargetBuildConfig(precision="int8", calib_data=str(tmp_path / "grey"), max_drop=0.5,
                                                  max_reverted_layers=1, qat=False, **FAST))
    assert _stage(lite0_run, "intel-cpu:int8")["status"] == BUDGET_MISSED
