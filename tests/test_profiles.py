"""Target profiles read from targets/*.yaml (no OpenVINO needed)."""

from __future__ import annotations

import pytest

from edgetl.errors import TargetError
from edgetl.profiles import TargetProfile, list_targets, load_target


def test_intel_cpu_profile_is_shipped_and_typed():
    profile = load_target("intel-cpu")
    assert "intel-cpu" in list_targets()
    assert (profile.runtime, profile.device) == ("openvino", "CPU")
    assert set(profile.precisions) == {"fp32", "fp16", "int8"}
    assert profile.check_precision(None) == profile.default_precision


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError) as info:
        load_target("intel-cpux")
    message = str(info.value)
    assert "Did you mean: intel-cpu" in message and "Known targets:" in message and "\n" not in message


def test_precision_the_target_cannot_serve():
    profile = TargetProfile(name="fp32-only", description="", runtime="openvino", device="CPU",
                            precisions=("fp32",), default_precision="fp32")
    with pytest.raises(TargetError, match="does not serve precision 'int8'.*fp32"):
        profile.check_precision("int8")


@pytest.mark.parametrize("data, match", [
    ({"name": "x", "runtime": "openvino", "device": "CPU", "precisions": ["int4"]}, "precisions"),
    ({"name": "x", "runtime": "openvino", "device": "CPU", "precisions": ["fp32"], "default_precision": "int8"},
     "default precision"),
    ({"name": "x", "runtime": "openvino", "precisions": ["fp32"]}, "lacks device"),
    ({"name": "x", "runtime": "openvino", "device": "CPU", "precisions": ["fp32"], "dla": 1}, "unknown keys"),
])
def test_bad_profiles_are_rejected(data, match):
    with pytest.raises(TargetError, match=match):
        TargetProfile.from_dict(data)


# -- runner options and quantization settings are checked when the profile is read ------------------------
def _profile(**changes) -> dict:
    return {"name": "x", "runtime": "openvino", "device": "CPU", "precisions": ["fp32"], **changes}


@pytest.mark.parametrize("data, match", [
    (_profile(runner_options={"performance_hnt": "LATENCY"}),
     r"^target x: openvino runner does not take option 'performance_hnt'\. Did you mean: performance_hint\?"),
    (_profile(runner_options={"performance_hint": "FAST"}), r"^target x: performance_hint must be one of"),
    (_profile(runner_options={"device": "GPU"}), r"set the device with the profile's `device:` key"),
    (_profile(runtime="openvno"), r"^target x: unknown runtime 'openvno'\. Did you mean: openvino\?"),
    (_profile(runtime="onnxruntime", runner_options={"streams": 2}),
     r"onnxruntime runner does not take option 'streams'"),
])
def test_bad_runner_options_are_rejected_on_load(data, match):
    with pytest.raises(TargetError, match=match):
        TargetProfile.from_dict(data)


def test_device_is_checked_as_a_runner_option():
    assert TargetProfile.from_dict(_profile(device="GPU")).device == "GPU"  # availability is checked at load()
    with pytest.raises(TargetError, match=r"openvino runner device must be an OpenVINO device name"):
        TargetProfile.from_dict(_profile(device=""))


def test_quantization_block_typo_is_an_error():
    from edgetl.compress.quantize import QuantizeSettings
    from edgetl.errors import ConfigError

    shipped = QuantizeSettings.from_dict(load_target("intel-cpu").quantization, source="intel-cpu.yaml")
    assert shipped.preset == "performance" and shipped.fast_bias_correction is True
    with pytest.raises(ConfigError, match=r"^intel-cpu\.yaml quantization setting 'fast_bias_corection' is "
                                          r"unknown\. Did you mean: fast_bias_correction\? "
                                          r"It takes: preset, fast_bias_correction$"):
        QuantizeSettings.from_dict({"fast_bias_corection": False}, source="intel-cpu.yaml")
    with pytest.raises(ConfigError, match="preset must be one of performance, mixed, not 'mixd'"):
        QuantizeSettings.from_dict({"preset": "mixd"})
