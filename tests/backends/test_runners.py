"""Every runner, one set of tests: load, describe, infer, agree with the float PyTorch model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgetl.backends import RUNNERS, create_runner
from edgetl.errors import EdgetlError, MissingBackendError


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def learned_run(learned_base) -> Path:
    """A run whose logits depend on the image (see conftest's ``learned_base``); these tests only read it."""
    return learned_base


@pytest.fixture(scope="module")
def inputs(learned_run) -> np.ndarray:
    from edgetl.data import load_array, run_eval_samples
    from edgetl.manifest import Manifest
    from edgetl.preprocessing import PreprocessSpec

    manifest = Manifest.load(learned_run)
    images, _ = load_array(run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    return images


@pytest.fixture(scope="module")
def reference(learned_run, inputs) -> np.ndarray:
    """The float PyTorch model's logits; they differ between images by far more than the tolerances below."""
    logits = create_runner("torch", learned_run / "checkpoint.pt").infer(inputs)
    assert np.ptp(logits, axis=0).max() > 100 * ATOL
    return logits


# each runtime's artifact is a fixture of its own
@pytest.fixture(scope="module")
def checkpoint(learned_run) -> Path:
    return learned_run / "checkpoint.pt"


@pytest.fixture(scope="module")
def onnx_model(learned_run) -> Path:
    return learned_run / "onnx" / "model.onnx"


@pytest.fixture(scope="module")
def openvino_ir(onnx_model, tmp_path_factory) -> Path:
    pytest.importorskip("openvino")
    from edgetl.backends.openvino import convert_onnx, save_ir

    return save_ir(convert_onnx(onnx_model), tmp_path_factory.mktemp("ir") / "model.xml")


# FP32 everywhere: kernels sum in different orders, which moves these ~0.1 logits by ~3e-7 (float32 eps
# is 1.2e-7); 1e-4 leaves room for other CPUs' kernels and still fails for bf16 compute (~4e-3 here).
ATOL = 1e-4

# runtime -> (artifact fixture, options for a true-FP32 run, marks)
CASES = [
    pytest.param("torch", "checkpoint", {}, id="torch"),
    pytest.param("onnxruntime", "onnx_model", {}, id="onnxruntime"),
    pytest.param("openvino", "openvino_ir", {"precision_hint": "f32"}, id="openvino",
                 marks=[pytest.mark.openvino, pytest.mark.skipif(not _has("openvino"), reason="openvino missing")]),
]


@pytest.mark.parametrize("runtime,artifact,options", CASES)
def test_runner_matches_float_reference(runtime, artifact, options, request, inputs, reference):
    with create_runner(runtime, request.getfixturevalue(artifact), threads=1, **options) as runner:
        out = runner.infer(inputs)
        info = runner.describe()
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert info.runtime == runtime and info.precision == "fp32" and info.version
    np.testing.assert_allclose(out, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("runtime,artifact,options", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_runner_batch_sizes(runtime, artifact, options, batch, request, inputs, reference):
    runner = create_runner(runtime, request.getfixturevalue(artifact), **options)
    out = runner.infer(inputs[:batch])
    assert out.shape == (batch, reference.shape[1])
    # each row is its own image's logits, wherever it sits in the batch
    np.testing.assert_allclose(out, reference[:batch], atol=ATOL, rtol=0)
    np.testing.assert_allclose(runner.infer(inputs[batch:batch + 1])[0], reference[batch], atol=ATOL, rtol=0)
    runner.close()


@pytest.mark.parametrize("runtime,artifact,options", CASES)
def test_runner_rejects_bad_input(runtime, artifact, options, request, inputs):
    runner = create_runner(runtime, request.getfixturevalue(artifact), **options)
    with pytest.raises(EdgetlError, match="float32 NCHW"):
        runner.infer(inputs[0])  # 3-D
    with pytest.raises(EdgetlError, match="float32 NCHW"):
        runner.infer(inputs.astype(np.float64))


@pytest.mark.parametrize("runtime", [r for r in RUNNERS if r != "tensorrt"])
def test_runner_missing_artifact(runtime, tmp_path):
    with pytest.raises(EdgetlError, match="not found"):
        create_runner(runtime, tmp_path / "nothing.bin").load()


# -- TensorRT ------------------------------------------------------------------------------------
@pytest.mark.skipif(_has("tensorrt"), reason="TensorRT is installed here")
def test_tensorrt_missing_names_the_extra(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(MissingBackendError, match=r"edgetl\[tensorrt\]"):
        create_runner("tensorrt", engine).load()
