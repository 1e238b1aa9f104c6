"""Shared fixtures: synthetic image folders, a tiny fine-tuned run, and the real hymenoptera data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = Path(os.environ.get("EDGETL_HYMENOPTERA", REPO.parent / "shared" / "datasets" / "hymenoptera_data"))

# colour per class: a model can learn these in one epoch, so accuracy tests mean something
CLASS_COLOURS = {"cats": (200, 40, 40), "dogs": (40, 40, 200), "birds": (40, 180, 40)}


def make_image_folder(root: Path, classes=("cats", "dogs"), per_class: int = 8, size: int = 40, seed: int = 0,
                      modes: tuple[str, ...] = ("RGB",)) -> Path:
    """``root/CLASS/i.png`` with noisy images whose dominant colour gives the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = np.array(CLASS_COLOURS.get(name, rng.integers(0, 255, 3)), dtype=np.float32)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            mode = modes[i % len(modes)]
            if mode != "RGB":
                image = image.convert(mode)
            image.save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """``root/train/CLASS`` + ``root/val/CLASS``."""
    root = tmp_path / "split"
    make_image_folder(root / "train", per_class=10, seed=1)
    make_image_folder(root / "val", per_class=4, seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A fine-tuned (1 epoch) random-init MobileNetV3-small at 32 px, exported to ONNX."""
    from edgetl.export import ExportConfig, export_onnx
    from edgetl.finetune import FinetuneConfig, finetune

    base = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(base / "data", classes=("cats", "dogs", "birds"), per_class=12)
    config = FinetuneConfig(data=str(data), output=str(base / "run"), model="mobilenet_v3_small", pretrained=False,
                            image_size=32, epochs=2, batch_size=8, workers=0, val_fraction=0.25)
    finetune(config, progress=False)
    export_onnx(base / "run", ExportConfig())
    return base / "run"


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"hymenoptera data not found at {HYMENOPTERA} (set EDGETL_HYMENOPTERA)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def lite0_run(tmp_path_factory, hymenoptera) -> Path:
    """EfficientNet-Lite0 (offline ImageNet weights), linear probe on hymenoptera at 160 px, ONNX exported."""
    from edgetl.export import ExportConfig, export_onnx
    from edgetl.finetune import FinetuneConfig, finetune

    run = tmp_path_factory.mktemp("lite0") / "run"
    finetune(FinetuneConfig(data=str(hymenoptera), output=str(run), strategy="linear-probe", epochs=8,
                            image_size=160, workers=0), progress=False)
    export_onnx(run, ExportConfig())
    return run


@pytest.fixture(scope="session")
def learned_base(tmp_path_factory) -> Path:
    """A run whose logits depend on the image, for tests that compare accuracies or logits (the tiny
    random-init run answers every 32 px image with the same logits, so any two runtimes of it agree).
    EfficientNet-Lite0 (offline ImageNet weights), linear probe on colour classes at 32 px, exported to ONNX.
    Session-scoped: copy it before changing it."""
    from edgetl.export import ExportConfig, export_onnx
    from edgetl.finetune import FinetuneConfig, finetune

    base = tmp_path_factory.mktemp("learned")
    data = make_image_folder(base / "data", classes=("cats", "dogs", "birds"), per_class=12)
    finetune(FinetuneConfig(data=str(data), output=str(base / "run"), model="efficientnet_lite0", pretrained=True,
                            strategy="linear-probe", image_size=32, epochs=3, batch_size=8, workers=0,
                            val_fraction=0.25), progress=False)
    export_onnx(base / "run", ExportConfig())
    return base / "run"
