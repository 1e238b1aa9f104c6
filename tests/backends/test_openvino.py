"""OpenVINORunner: inference, reported precision, lazy import."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgetl.errors import ConfigError, MissingBackendError

pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def batch(tiny_run):
    return np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)


def test_true_fp32_matches_onnxruntime_and_reports_fp32(tiny_run, batch):
    from edgetl.backends.onnxruntime import OnnxRuntimeRunner
    from edgetl.backends.openvino import OpenVINORunner

    with OnnxRuntimeRunner(tiny_run / "onnx" / "model.onnx") as ort, \
            OpenVINORunner(tiny_run / "onnx" / "model.onnx", precision_hint="f32") as ov:
        reference = ort.infer(batch)
        assert np.allclose(ov.infer(batch), reference, atol=1e-4)
        assert np.allclose(ov.infer(batch[:1]), reference[:1], atol=1e-4)  # recompiled for batch 1
        info = ov.describe()
    assert info.precision == "fp32" and info.extra["inference_precision_hint"] == "fp32"
    assert info.extra["model_precision"] == "fp32" and info.threads >= 1


def test_default_hint_reports_what_the_cpu_runs(tiny_run, batch):
    import openvino as ov

    from edgetl.backends.openvino import OpenVINORunner, precision_name

    default = precision_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    with OpenVINORunner(tiny_run / "onnx" / "model.onnx") as runner:
        runner.infer(batch[:1])
        info = runner.describe()
    assert info.extra["inference_precision_hint"] == default
    assert default in info.precision.split("+")  # e.g. bf16 on an AVX512-BF16 / AMX CPU


def test_options_are_validated():
    from edgetl.backends.openvino import OpenVINORunner

    with pytest.raises(ConfigError, match="precision_hint"):
        OpenVINORunner("model.xml", precision_hint="fp64")
    with pytest.raises(ConfigError, match="performance_hint"):
        OpenVINORunner("model.xml", performance_hint="FAST")


def test_missing_openvino_names_the_extra(monkeypatch, tiny_run):
    from edgetl.backends.openvino import OpenVINORunner

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingBackendError, match=r"pip install 'edgetl\[openvino\]'"):
        OpenVINORunner(tiny_run / "onnx" / "model.onnx").load()
