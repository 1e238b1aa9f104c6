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
    with pytest.raises(ParityError):
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
    with pytest.raises(ConfigError):
        ExportConfig(opset=7)
    with pytest.raises(ConfigError):
        ExportConfig(exporter="magic")
