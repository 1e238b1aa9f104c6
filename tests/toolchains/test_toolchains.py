"""The toolchain table and the generic build driver's early checks."""

from __future__ import annotations

import importlib

import pytest

from edgetl.errors import ConfigError, TargetError
from edgetl.toolchains import TOOLCHAINS, Toolchain, get_toolchain


@pytest.mark.parametrize("name", sorted(TOOLCHAINS))
def test_every_toolchain_row_names_a_toolchain(name: str):
    module, _, cls = TOOLCHAINS[name].partition(":")
    toolchain = getattr(importlib.import_module(module), cls)()
    assert isinstance(toolchain, Toolchain) and toolchain.name == name
    from edgetl.backends import runtime_spec
    from edgetl.compress.quantize import BACKENDS

    assert runtime_spec(toolchain.runtime).name == toolchain.runtime  # builds something a runtime can run
    assert toolchain.quantizer in BACKENDS


def test_unknown_toolchain_is_one_line():
    with pytest.raises(TargetError, match="no toolchain 'openvio' to build with. Did you mean: openvino"):
        get_toolchain("openvio")


def test_a_typo_in_the_quantization_block_fails_before_any_work(tiny_run, monkeypatch):
    from edgetl import build
    from edgetl.profiles import TargetProfile, load_target

    profile = load_target("intel-cpu")
    typo = TargetProfile(**{**profile.__dict__, "quantization": {"presett": "mixed"}})
    monkeypatch.setattr(build, "load_target", lambda name: typo)
    monkeypatch.setattr(build, "_build", lambda *a, **k: pytest.fail("the build started"))
    with pytest.raises(ConfigError, match="'presett' is unknown. Did you mean: preset"):
        build.build_target(tiny_run, build.TargetBuildConfig(precision="int8"))
