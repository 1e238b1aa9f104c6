"""Calibration sampling and the INT8 sensitivity report."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from conftest import make_image_folder

from edgetl.errors import DatasetError
from edgetl.manifest import Manifest

pytestmark = pytest.mark.openvino


def test_calibration_is_class_balanced_and_warns_when_short(tiny_run, caplog):
    from edgetl.compress.quantize import calibration_samples

    manifest = Manifest.load(tiny_run)
    with caplog.at_level(logging.WARNING):
        samples = calibration_samples(manifest, None, 300)
    assert len(samples) < 300
    assert f"only {len(samples)} images (asked for 300" in caplog.text
    counts = Counter(label for _, label in samples)
    assert max(counts.values()) - min(counts.values()) <= 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(calibration_samples(manifest, None, 6)) == 6
    assert "calibration uses only" not in caplog.text


def test_calibration_images_of_other_classes_are_refused(tiny_run, tmp_path):
    from edgetl.compress.quantize import calibration_samples

    folder = make_image_folder(tmp_path / "calib", classes=("cats", "horses"), per_class=2)
    with pytest.raises(DatasetError, match=r"calibration data: .*missing \['birds', 'dogs'\], extra \['horses'\]"):
        calibration_samples(Manifest.load(tiny_run), folder, 10)


def test_sensitivity_report_ranks_quantized_layers(tiny_run):
    from edgetl.backends.openvino import OpenVINORunner, convert_onnx
    from edgetl.compress.quantize import calibration_samples, quantize_ptq, sensitivity_report
    from edgetl.data import load_array, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec

    manifest = Manifest.load(tiny_run)
    spec = PreprocessSpec.from_dict(manifest.data["preprocessing"])
    float_model = convert_onnx(tiny_run / "onnx" / "model.onnx")
    int8 = quantize_ptq(float_model, calibration_samples(manifest, None, 12), spec)
    images, _ = load_array(run_eval_samples(manifest), spec)  # the run's val images, preprocessed as bench does
    precisions = OpenVINORunner.from_model(int8).layer_precisions(original_names=True)
    report = sensitivity_report(float_model, int8, images, precisions)
    layers = report["layers"]
    assert report["images"] == len(images) == 9 and len(layers) > 10
    # INT8 error enters at a few layers: the worst one loses dB of its own, and its output error is far
    # above the median layer's (a report comparing float with float, or ranked backwards, fails here)
    nmse = sorted(r["nmse"] for r in layers)
    assert layers[0]["added_db"] > 3 and layers[0]["nmse"] > 10 * nmse[len(nmse) // 2] > 0, layers[:3]
    assert report["final_layer_sqnr_db"] > 20  # yet the logits keep most of their signal
    assert Counter(r["runs_in"] for r in layers).most_common(1)[0][0] == "int8"  # the layers mostly run in INT8
