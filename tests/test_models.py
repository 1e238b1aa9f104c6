"""Backbone registry: names, heads, weight files, preprocessing, and the offline Lite0 weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.errors import ModelError
from edgetl.models import build_model, resolve_name


@pytest.mark.parametrize("name,expected", [
    ("efficientnet_lite0", ("edgetl", "efficientnet_lite0")),
    ("EfficientNet-Lite0", ("edgetl", "efficientnet_lite0")),
    ("VGG19", ("torchvision", "vgg19")),
    ("InceptionV3", ("torchvision", "inception_v3")),
    ("ResNet50", ("torchvision", "resnet50")),
    ("efficientnet-b0", ("torchvision", "efficientnet_b0")),
    ("MobileNetV3", ("torchvision", "mobilenet_v3_large")),
    ("timm:resnet18", ("timm", "resnet18")),
])
def test_resolve_names(name, expected):
    assert resolve_name(name) == expected


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelError, match="Did you mean:.*resnet50"):
        resolve_name("resnet5O")


def test_unknown_prefixed_name():
    with pytest.raises(ModelError, match="unknown timm model"):
        resolve_name("timm:not_a_model_at_all")


def test_head_replaced_and_preprocessing_carried():
    bundle = build_model("mobilenet_v3_small", 3, pretrained=False, image_size=32)
    assert bundle.head == ["classifier.3"]
    assert bundle.model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert bundle.preprocess.input_size == 32
    assert bundle.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.slow
def test_inception_trains_with_aux_logits_and_exports_without():
    bundle = build_model("inception_v3", 2, pretrained=False)
    assert bundle.head == ["fc", "AuxLogits.fc"] and bundle.preprocess.input_size == 299
    assert bundle.preprocess.resize_size > bundle.preprocess.input_size
    logits, aux = bundle.model.train()(torch.randn(2, 3, 299, 299))
    assert logits.shape == aux.shape == (2, 2)
    assert bundle.model.eval()(torch.randn(1, 3, 299, 299)).shape == (1, 2)


def test_inception_small_input_drops_aux_head():
    bundle = build_model("inception_v3", 2, pretrained=False, image_size=80)
    assert bundle.head == ["fc"] and bundle.model.AuxLogits is None
    assert bundle.model.train()(torch.randn(2, 3, 80, 80)).shape == (2, 2)


def test_timm_model_head():
    bundle = build_model("timm:resnet18", 4, pretrained=False)
    assert bundle.model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    assert bundle.name == "timm:resnet18"


def test_lite0_preprocessing_matches_timm_cfg():
    bundle = build_model("efficientnet_lite0", 2)
    spec = bundle.preprocess
    assert (spec.input_size, spec.interpolation, spec.mean, spec.std) == (224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert spec.crop_pct == pytest.approx(0.875, abs=0.01)
    assert bundle.pretrained == "imagenet"


def test_offline_lite0_is_really_pretrained(hymenoptera: Path):
    """ImageNet weights know ants and bees: the ImageNet 'ant' (310) and 'bee' (309) logits separate
    the two hymenoptera classes far better than chance; random init cannot."""
    import timm

    from edgetl.data import load_array, scan_image_folder
    from edgetl.models import LITE0_PREPROCESS, lite0_offline_state_dict

    samples = scan_image_folder(hymenoptera / "val").samples[::3]
    images, labels = load_array(samples, LITE0_PREPROCESS)

    def accuracy(pretrained: bool) -> float:
        torch.manual_seed(0)
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # as registered: ImageNet head
        if pretrained:
            model.load_state_dict(lite0_offline_state_dict(model.state_dict()))
        model.eval()
        with torch.inference_mode():
            logits = model(torch.from_numpy(images))[:, [310, 309]].numpy()  # ImageNet: 310 ant, 309 bee
        return float(np.mean(logits.argmax(1) == labels))

    assert accuracy(True) >= 0.85
    assert accuracy(False) <= 0.75


def test_weight_file_round_trip(tmp_path: Path):
    source = build_model("mobilenet_v3_small", 3, pretrained=False)
    torch.save(source.model.state_dict(), tmp_path / "w.pt")
    loaded = build_model("mobilenet_v3_small", 3, weights=tmp_path / "w.pt")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), source.model(x))
    assert loaded.pretrained.startswith("file:")


def test_weight_file_with_other_head_size(tmp_path: Path):
    source = build_model("mobilenet_v3_small", 5, pretrained=False)
    torch.save({"state_dict": source.model.state_dict()}, tmp_path / "w.pt")
    loaded = build_model("mobilenet_v3_small", 3, weights=tmp_path / "w.pt")
    assert "head re-initialised" in loaded.pretrained
    own = loaded.model.features[0][0].weight
    torch.testing.assert_close(own, source.model.features[0][0].weight)


def test_weight_file_for_another_architecture(tmp_path: Path):
    other = build_model("resnet18", 2, pretrained=False)
    torch.save(other.model.state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(ModelError, match="does not match this architecture"):
        build_model("mobilenet_v3_small", 2, weights=tmp_path / "resnet.pt")


def test_weight_file_missing_or_garbage(tmp_path: Path):
    with pytest.raises(ModelError, match="not found"):
        build_model("mobilenet_v3_small", 2, weights=tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.pt cannot be read as a weight file"):
        build_model("mobilenet_v3_small", 2, weights=tmp_path / "junk.pt")
