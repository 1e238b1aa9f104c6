"""The backbones our users' tutorials name: each fine-tunes and exports to ONNX with parity.

Random init (no downloads here) and small inputs; the heavy ones are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl.export import export_onnx
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.manifest import Manifest

from conftest import make_image_folder

ZOO = [
    pytest.param("efficientnet_lite0", 32, id="EfficientNet-Lite0"),
    pytest.param("MobileNetV3", 32, id="MobileNetV3"),
    pytest.param("efficientnet-b0", 32, id="EfficientNet-B0"),
    pytest.param("ResNet50", 32, id="ResNet50", marks=pytest.mark.slow),
    pytest.param("InceptionV3", 299, id="InceptionV3", marks=pytest.mark.slow),  # aux head needs 299 px
    pytest.param("VGG19", 32, id="VGG19", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("zoo") / "data", per_class=6, size=48)


@pytest.mark.parametrize("name,size", ZOO)
def test_backbone_finetunes_and_exports(name: str, size: int, zoo_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    config = FinetuneConfig(data=str(zoo_data), output=str(run), model=name, pretrained=name == "efficientnet_lite0",
                            image_size=size, epochs=1, batch_size=4, workers=0, val_fraction=0.34)
    finetune(config, progress=False)
    result = export_onnx(run)
    assert result.metrics["top1_agreement"] == 1.0
    manifest = Manifest.load(run)
    assert manifest.completed("onnx") and manifest.verify() == []
