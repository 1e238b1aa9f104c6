"""PreprocessSpec.apply (PIL + numpy) against the torchvision eval transform, and without torch at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data import load_rgb
from edgetl.preprocessing import PreprocessSpec, center_crop, resized_size

from conftest import REPO

# Measured 0.0 (bit-exact) on every photo and filter: the same PIL resize, then the same float32 operations in
# the same order. 1e-6 leaves room for one float32 ulp (~6e-8 at these magnitudes), e.g. a torch that divides by
# 255 as a multiplication by 1/255; any real pipeline difference (filter, size, crop offset) is >= 1e-3.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def val_photos(hymenoptera: Path) -> list[Image.Image]:
    paths = sorted(p for p in (hymenoptera / "val").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [load_rgb(p) for p in paths]


def _max_diff(spec: PreprocessSpec, images: list[Image.Image]) -> float:
    transform, worst = spec.eval_transform(), 0.0
    for image in images:
        ours, theirs = spec.apply(image), transform(image).numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


@pytest.mark.parametrize("spec", [
    PreprocessSpec(interpolation="bilinear"),
    PreprocessSpec(interpolation="bicubic"),
    PreprocessSpec(interpolation="nearest"),
    # odd sizes: crop offsets of x.5 (Python's round halves to even) and another mean/std
    PreprocessSpec(input_size=161, resize_size=183, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
], ids=["bilinear", "bicubic", "nearest", "bicubic-161-183"])
def test_apply_matches_torchvision_on_real_photos(val_photos, spec: PreprocessSpec):
    assert len(val_photos) > 100
    assert _max_diff(spec, val_photos) <= TOLERANCE


def _synthetic(root: Path) -> list[Path]:
    """Grayscale, alpha, palette, 16-bit, tiny and oddly sized images."""
    rng = np.random.default_rng(0)
    root.mkdir()

    def rgb(width: int, height: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    images = {
        "gray.png": rgb(300, 200).convert("L"), "rgba.png": rgb(199, 257).convert("RGBA"),
        "la.png": rgb(64, 48).convert("LA"), "palette.png": rgb(120, 90).convert("P"),
        "tiny.png": rgb(5, 3), "one_row.png": rgb(90, 1), "odd.png": rgb(37, 101), "square.png": rgb(256, 256),
        "gray16.png": Image.fromarray(rng.integers(0, 65536, (70, 50), dtype=np.uint16)),
    }
    alpha = np.asarray(images["rgba.png"]).copy()
    alpha[..., 3] = rng.integers(0, 256, alpha.shape[:2])
    images["rgba.png"] = Image.fromarray(alpha, "RGBA")
    for name, image in images.items():
        image.save(root / name)
    return sorted(root.iterdir())


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_apply_matches_torchvision_on_synthetic_images(tmp_path: Path, interpolation: str):
    spec = PreprocessSpec(input_size=33, resize_size=40, interpolation=interpolation)
    paths = _synthetic(tmp_path / "synthetic")
    modes = {Image.open(p).mode for p in paths}
    assert {"L", "RGBA", "LA", "P", "RGB"} <= modes and any(m.startswith("I") for m in modes)
    assert _max_diff(spec, [load_rgb(p) for p in paths]) <= TOLERANCE
    for path in paths:  # apply converts a non-RGB image as load_rgb does
        with Image.open(path) as raw:
            np.testing.assert_array_equal(spec.apply(raw), spec.apply(load_rgb(path)))


def test_resized_size_is_torchvisions():
    from torchvision.transforms.functional import _compute_resized_output_size  # noqa: PLC2701 (the oracle)

    for width in (1, 2, 3, 5, 37, 100, 224, 255, 256, 257, 333, 500, 1023):
        for height in (1, 3, 7, 99, 224, 256, 375, 640, 4000):
            for shorter in (32, 183, 256):
                new_h, new_w = _compute_resized_output_size((height, width), [shorter])
                assert resized_size(width, height, shorter) == (new_w, new_h), (width, height, shorter)


@pytest.mark.parametrize("size", [(5, 3), (10, 40), (40, 9), (20, 20), (21, 21), (7, 30), (30, 30), (31, 46)])
def test_center_crop_pads_and_rounds_like_torchvision(size: tuple[int, int]):
    """Smaller than the crop: zero padding split as torchvision splits it; larger: its rounding of offsets."""
    from torchvision.transforms import CenterCrop

    pixels = np.random.default_rng(1).integers(1, 256, (size[1], size[0], 3), dtype=np.uint8)
    for crop in (20, 21):
        expected = np.asarray(CenterCrop(crop)(Image.fromarray(pixels)))
        ours = center_crop(pixels, crop)
        assert ours.shape == (crop, crop, 3)
        np.testing.assert_array_equal(ours, expected)


TORCH_FREE = """
import json, sys
sys.modules["torch"] = None
sys.modules["torchvision"] = None
from pathlib import Path
import numpy as np
from edgetl.data import EvalImages, iter_batches, load_rgb
from edgetl.preprocessing import PreprocessSpec
try:
    PreprocessSpec().eval_transform()
    blocked = False
except ImportError:
    blocked = True
paths = sorted(Path(sys.argv[1]).iterdir())
spec = PreprocessSpec(input_size=33, resize_size=40, interpolation="bicubic")
images, labels = next(iter_batches([(p, i) for i, p in enumerate(paths)], spec, len(paths)))
np.save(sys.argv[2], images)
head = EvalImages([(p, 0) for p in paths], spec)[:2]
print(json.dumps({"blocked": blocked, "labels": labels.tolist(), "head": list(head.shape),
                  "torch": sorted(m for m in ("torch", "torchvision") if sys.modules.get(m) is not None)}))
"""


def test_eval_preprocessing_needs_no_torch(tmp_path: Path):
    paths = _synthetic(tmp_path / "synthetic")
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(tmp_path / "synthetic"), str(tmp_path / "out.npy")],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"blocked": True, "labels": list(range(len(paths))), "head": [2, 3, 33, 33], "torch": []}
    spec = PreprocessSpec(input_size=33, resize_size=40, interpolation="bicubic")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.stack([spec.apply(load_rgb(p)) for p in paths]))


@pytest.mark.parametrize("strength, smallest, jitter", [(1.0, 0.35, 0.2), (0.0, 1.0, 0.0), (2.0, 0.08, 0.4)])
def test_augment_strength_scales_crop_and_jitter(strength, smallest, jitter):
    from torchvision import transforms as T

    steps = PreprocessSpec().train_transform(True, strength).transforms
    crop = next(s for s in steps if isinstance(s, T.RandomResizedCrop))
    colour = next(s for s in steps if isinstance(s, T.ColorJitter))
    assert crop.scale == pytest.approx((smallest, 1.0))
    assert (colour.brightness or (1, 1))[1] == pytest.approx(1 + jitter)


def test_augment_strength_range():
    from edgetl.errors import ConfigError
    from edgetl.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match="augment_strength"):
        FinetuneConfig(data=".", augment_strength=2.5)
