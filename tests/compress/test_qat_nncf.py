"""Which fake-quant kernels NNCF's QAT trains with: torch-native by default, the C++ extension on request,
and a one-line warning (not a failure) when the extension cannot be built."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("nncf")
pytest.importorskip("torch")

from edgetl.compress.quantize import qat_nncf  # noqa: E402
from edgetl.errors import ConfigError  # noqa: E402


@pytest.fixture
def namespace(monkeypatch):
    from nncf.torch.quantization import extensions

    ns = extensions.QuantizedFunctionsCPU
    monkeypatch.setattr(ns, "_loaded_namespace", None)  # restored after the test
    return ns


def test_torch_native_kernels_by_default(namespace, monkeypatch):
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    monkeypatch.delenv(qat_nncf.KERNELS_ENV, raising=False)
    assert qat_nncf.use_kernels() == "torch" and namespace._loaded_namespace is ReferenceQuantizedFunctions


def test_an_extension_that_cannot_be_built_falls_back_in_one_line(namespace, monkeypatch, caplog):
    def no_compiler(name):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore lines")

    monkeypatch.setenv(qat_nncf.KERNELS_ENV, "extension")
    monkeypatch.setattr(namespace, "get", no_compiler)
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        assert qat_nncf.use_kernels() == "torch"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "could not be built (RuntimeError: Ninja is required" in lines[0] and "torch-native" in lines[0]


def test_an_unknown_kernel_choice_is_refused(namespace, monkeypatch):
    monkeypatch.setenv(qat_nncf.KERNELS_ENV, "cuda")
    with pytest.raises(ConfigError, match="EDGETL_NNCF_KERNELS must be torch or extension"):
        qat_nncf.use_kernels()
