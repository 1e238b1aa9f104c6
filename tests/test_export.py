"""ONNX export: dynamic batch, parity against PyTorch, failures that leave no model behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetl.errors import ConfigError, ParityError, RunFolderError
from edgetl.export import ExportConfig, check_parity, export_onnx
from edgetl.manifest import Manifest


def test_exported_model_recorded_and_dynamic(tiny_run: Path):
    manifest = Manifest.load(tiny_run)
    stage = manifest.require("onnx", "")
    metrics = stage["metrics"]
    assert metrics["max_abs_diff"] <= 1e-4 and metrics["top1_agreement"] == 1.0
    assert metrics["parity_images"] == 9  # 3 classes x 12 images x 0.25 held out
    entry = stage["artifacts"]["onnx/model.onnx"]
    assert entry["runtime"] == "onnxruntime" and len(entry["sha256"]) == 64
    model = onnx.load(str(tiny_run / "onnx" / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runs_any_batch(tiny_run: Path, batch: int):
    from edgetl.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(tiny_run / "onnx" / "model.onnx") as runner:
        assert runner.infer(np.zeros((batch, 3, 32, 32), np.float32)).shape == (batch, 3)


def test_parity_failure_is_an_error(tiny_run: Path):
    from edgetl.models import load_run_model

    model, _ = load_run_model(tiny_run)
    with torch_perturbed(model):
        with pytest.raises(ParityError, match="differs from PyTorch"):
            check_parity(model, tiny_run / "onnx" / "model.onnx", np.random.rand(4, 3, 32, 32).astype(np.float32),
                         atol=1e-4)


class torch_perturbed:
    """Shift the head bias so PyTorch and the exported ONNX disagree."""

    def __init__(self, model):
        self.bias = model.classifier[3].bias

    def __enter__(self):
        self.bias.data += 1.0

    def __exit__(self, *exc):
        self.bias.data -= 1.0


def test_failed_parity_keeps_no_model(tiny_run: Path, tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "onnx" / "model.onnx").unlink()

    def fails(*args, **kwargs):
        raise ParityError("forced")

    monkeypatch.setattr("edgetl.export.check_parity", fails)
    with pytest.raises(ParityError, match="^forced$"):
        export_onnx(run)
    assert not (run / "onnx" / "model.onnx").exists()
    assert not [p for p in (run / "onnx").iterdir()]  # no temporary left either
    assert Manifest.load(run).stage("onnx")["status"] == "failed"


def test_export_needs_a_finished_run(tmp_path: Path):
    with pytest.raises(RunFolderError, match="not found"):
        export_onnx(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="no edgetl.json"):
        export_onnx(tmp_path / "empty")


def test_torchscript_exporter_and_static_batch(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = export_onnx(run, ExportConfig(exporter="torchscript", dynamic_batch=False, opset=17))
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and result.metrics["top1_agreement"] == 1.0


def test_export_config_validation():
    with pytest.raises(ConfigError, match="opset must be between 13 and 23, got 7"):
        ExportConfig(opset=7)
    with pytest.raises(ConfigError, match="exporter must be dynamo or torchscript, not 'magic'"):
        ExportConfig(exporter="magic")


# -- parity on streamed batches, on a bounded class-balanced sample --------------------------------

def _whole_array_metrics(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float) -> dict:
    """The parity figures computed on all logits at once (check_parity before it streamed)."""
    diff = np.abs(ref - out)
    excess = diff - (atol + rtol * np.abs(ref).max(axis=1, keepdims=True))
    flips = ref.argmax(1) != out.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0]) <= 2 * diff.max(axis=1)
    return {"images": len(ref), "max_diff": float(diff.max()), "mean_diff": float(diff.astype(np.float64).mean()),
            "max_ref": float(np.abs(ref).max()), "excess": float(excess.max()), "flips": int(flips.sum()),
            "tie_flips": int((flips & ties).sum())}


def test_parity_stats_per_batch_equal_whole_array():
    from edgetl.export import ParityStats

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 3, (50, 5)).astype(np.float32)
    out = (ref + rng.normal(0, 1e-5, ref.shape)).astype(np.float32)
    ref[3], out[3] = (10.0, 10.000001, 0, 0, 0), (10.000002, 10.0, 0, 0, 0)  # a numerical tie that flips
    ref[7], out[7] = (30.0, 1.0, 0, 0, 0), (1.0, 30.0, 0, 0, 0)  # decisive flips
    ref[11], out[11] = (0, 0, 0, 28.0, 0), (0, 0, 0, 0, 28.0)
    expected = _whole_array_metrics(ref, out, 1e-4, 2e-4)
    assert expected["flips"] >= 3 and expected["tie_flips"] >= 1 and expected["excess"] > 0
    for size in (1, 7, 50):
        stats = ParityStats()
        for start in range(0, len(ref), size):
            stats.add(ref[start:start + size], out[start:start + size], 1e-4, 2e-4)
        got = {"images": stats.images, "max_diff": stats.max_diff, "mean_diff": stats.sum_diff / stats.values,
               "max_ref": stats.max_ref, "excess": stats.excess, "flips": stats.flips, "tie_flips": stats.tie_flips}
        assert got == {**expected, "mean_diff": pytest.approx(expected["mean_diff"], rel=1e-12)}, size
        np.testing.assert_array_equal(np.concatenate(stats.logits), out)


def test_check_parity_streamed_equals_one_array(tiny_run: Path):
    from edgetl.backends.onnxruntime import OnnxRuntimeRunner
    from edgetl.backends.torch_eager import TorchRunner
    from edgetl.data import EvalImages, load_array, run_eval_samples
    from edgetl.models import load_run_model
    from edgetl.preprocessing import PreprocessSpec

    manifest = Manifest.load(tiny_run)
    samples, spec = run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.preprocessing)
    model, _ = load_run_model(tiny_run)
    onnx_path = tiny_run / "onnx" / "model.onnx"
    array, _ = load_array(samples, spec)
    streamed = check_parity(model, onnx_path, EvalImages(samples, spec), 1e-4, 2e-4, batch_size=4)
    in_memory = check_parity(model, onnx_path, array, 1e-4, 2e-4, batch_size=4)
    np.testing.assert_array_equal(streamed.pop("_onnx_logits"), in_memory.pop("_onnx_logits"))
    assert streamed == in_memory and streamed["parity_images"] == len(samples) == 9
    reference, candidate = TorchRunner.from_module(model), OnnxRuntimeRunner(onnx_path)
    ref = np.concatenate([reference.infer(array[s:s + 4]) for s in range(0, 9, 4)])
    out = np.concatenate([candidate.infer(array[s:s + 4]) for s in range(0, 9, 4)])
    whole = _whole_array_metrics(ref, out, 1e-4, 2e-4)
    assert (streamed["max_abs_diff"], streamed["max_ref_logit"], streamed["top1_agreement"]) == (
        whole["max_diff"], whole["max_ref"], 1 - whole["flips"] / 9)
    assert streamed["mean_abs_diff"] == pytest.approx(whole["mean_diff"], rel=1e-9)


class _Captured(Exception):
    pass


def _capture_parity_images(run: Path, monkeypatch, config: ExportConfig, samples) -> object:
    """The images export_onnx hands to check_parity (ONNX writing stubbed out, nothing decoded)."""
    seen = {}

    def capture(model, path, images, *args, **kwargs):
        seen["images"] = images
        raise _Captured

    monkeypatch.setattr("edgetl.data.run_eval_samples", lambda manifest, data=None: samples)
    monkeypatch.setattr("edgetl.export.torch_to_onnx", lambda *args: None)
    monkeypatch.setattr("edgetl.export.check_parity", capture)
    with pytest.raises(_Captured):
        export_onnx(run, config)
    return seen["images"]


def test_export_parity_sample_is_bounded_and_class_balanced(tiny_run: Path, tmp_path: Path, monkeypatch):
    from collections import Counter

    from edgetl.data import EvalImages, run_eval_samples

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    val = run_eval_samples(Manifest.load(run))
    by_label = {label: [p for p, lab in val if lab == label] for label in (0, 1, 2)}
    counts = {0: 400, 1: 150, 2: 50}  # 600 uneven samples: far more than the default
    many = [(by_label[label][i % len(by_label[label])], label) for label, n in counts.items() for i in range(n)]
    assert ExportConfig().parity_images == 256
    images = _capture_parity_images(run, monkeypatch, ExportConfig(simplify=False), many)
    assert isinstance(images, EvalImages) and len(images) == 256
    assert Counter(images.labels.tolist()) == {0: 103, 1: 103, 2: 50}
    everything = _capture_parity_images(run, monkeypatch, ExportConfig(simplify=False, parity_images=None), many)
    assert len(everything) == 600
    with pytest.raises(ConfigError, match="parity_images"):
        ExportConfig(parity_images=0)
