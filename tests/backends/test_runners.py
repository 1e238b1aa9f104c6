"""Every runner, one set of tests: load, describe, infer, agree with the float PyTorch model."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.backends import RUNNERS, create_runner
from edgetl.errors import EdgetlError, MissingBackendError


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def tiny_inputs(tiny_run):
    from edgetl.data import load_array, run_eval_samples
    from edgetl.manifest import Manifest
    from edgetl.preprocessing import PreprocessSpec

    manifest = Manifest.load(tiny_run)
    images, _ = load_array(run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    return images


@pytest.fixture(scope="module")
def tiny_ir(tiny_run, tmp_path_factory) -> Path:
    pytest.importorskip("openvino")
    from edgetl.backends.openvino import convert_onnx, save_ir

    path = tmp_path_factory.mktemp("ir") / "model.xml"
    return save_ir(convert_onnx(tiny_run / "onnx" / "model.onnx"), path)


# runtime -> (artifact getter, options for a true-FP32 run, marks)
CASES = [
    pytest.param("torch", lambda run, ir: run / "checkpoint.pt", {}, id="torch"),
    pytest.param("onnxruntime", lambda run, ir: run / "onnx" / "model.onnx", {}, id="onnxruntime"),
    pytest.param("openvino", lambda run, ir: ir, {"precision_hint": "f32"}, id="openvino",
                 marks=[pytest.mark.openvino, pytest.mark.skipif(not _has("openvino"), reason="openvino missing")]),
]


@pytest.fixture
def artifact_for(tiny_run, request):
    def get(getter):
        ir = request.getfixturevalue("tiny_ir") if "openvino" in request.node.name else None
        return getter(tiny_run, ir)
    return get


@pytest.mark.parametrize("runtime,getter,options", CASES)
def test_runner_matches_float_reference(runtime, getter, options, artifact_for, tiny_run, tiny_inputs):
    reference = create_runner("torch", tiny_run / "checkpoint.pt").infer(tiny_inputs)
    with create_runner(runtime, artifact_for(getter), threads=1, **options) as runner:
        out = runner.infer(tiny_inputs)
        info = runner.describe()
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert info.runtime == runtime and info.precision == "fp32" and info.version
    np.testing.assert_allclose(out, reference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("runtime,getter,options", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_runner_batch_sizes(runtime, getter, options, batch, artifact_for, tiny_inputs):
    runner = create_runner(runtime, artifact_for(getter), **options)
    out = runner.infer(tiny_inputs[:batch])
    assert out.shape[0] == batch and np.isfinite(out).all()
    # a batch is independent of its neighbours: row 0 alone equals row 0 in the batch
    np.testing.assert_allclose(runner.infer(tiny_inputs[:1])[0], out[0], atol=1e-4, rtol=1e-4)
    runner.close()


@pytest.mark.parametrize("runtime,getter,options", CASES)
def test_runner_rejects_bad_input(runtime, getter, options, artifact_for, tiny_inputs):
    runner = create_runner(runtime, artifact_for(getter), **options)
    with pytest.raises(EdgetlError, match="float32 NCHW"):
        runner.infer(tiny_inputs[0])  # 3-D
    with pytest.raises(EdgetlError, match="float32 NCHW"):
        runner.infer(tiny_inputs.astype(np.float64))


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


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tiny_run, tiny_inputs, tmp_path):
    trt = pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    onnx_path = tiny_run / "onnx" / "model.onnx"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = tiny_inputs.shape[1:]
    profile.set_shape(network.get_input(0).name, (1, *shape), (4, *shape), (16, *shape))
    config.add_optimization_profile(profile)
    engine = tmp_path / "model.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    shutil.copy(onnx_path, tmp_path / "model.onnx")

    reference = create_runner("onnxruntime", onnx_path).infer(tiny_inputs[:4])
    with create_runner("tensorrt", engine) as runner:
        out = runner.infer(tiny_inputs[:4])
        info = runner.describe()
    assert info.extra["tensorrt_version"] == trt.__version__ and info.extra["compute_capability"]
    np.testing.assert_allclose(out, reference, atol=2e-2, rtol=2e-2)  # TF32 may be on by default
    with pytest.raises(EdgetlError, match="optimization profile"):
        runner.load().infer(np.zeros((17, *shape), np.float32))
