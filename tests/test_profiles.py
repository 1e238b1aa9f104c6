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
