"""Image folder validation: every bad input gets a clear error or a counted warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from edgetl.data import balanced_sample, load_rgb, load_splits, scan_image_folder, stratified_split
from edgetl.errors import DatasetError

from conftest import make_image_folder


def test_scan_lists_classes_and_images(image_folder: Path):
    scan = scan_image_folder(image_folder)
    assert scan.classes == ["cats", "dogs"]
    assert scan.counts() == {"cats": 8, "dogs": 8}
    assert not scan.skipped


def test_missing_path(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_folder_without_class_subfolders(tmp_path: Path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetError, match="no class subfolders"):
        scan_image_folder(tmp_path / "flat")


def test_empty_class_folder(image_folder: Path):
    (image_folder / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty.*no readable images"):
        scan_image_folder(image_folder)


def test_corrupt_image_skipped_and_counted(image_folder: Path):
    (image_folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = (image_folder / "dogs" / "000.png").read_bytes()[:60]
    (image_folder / "dogs" / "truncated.png").write_bytes(truncated)
    scan = scan_image_folder(image_folder)
    assert sorted(p.name for p, _ in scan.skipped) == ["broken.jpg", "truncated.png"]
    assert scan.counts() == {"cats": 8, "dogs": 8}
    assert "2 unreadable skipped" in scan.summary()


def test_corrupt_image_fails_when_strict(image_folder: Path):
    (image_folder / "cats" / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="unreadable image .*broken.jpg.*--strict"):
        scan_image_folder(image_folder, strict=True)


def test_grayscale_rgba_palette_are_converted(tmp_path: Path):
    root = make_image_folder(tmp_path / "modes", per_class=6, modes=("RGB", "L", "RGBA", "P"))
    scan = scan_image_folder(root)
    assert dict(scan.converted) == {"L": 4, "RGBA": 2, "P": 2}
    for path, _ in scan.samples:
        assert load_rgb(path).mode == "RGB"


def test_train_val_with_different_classes(split_folder: Path):
    (split_folder / "val" / "dogs").rename(split_folder / "val" / "wolves")
    with pytest.raises(DatasetError, match=r"missing \['dogs'\], extra \['wolves'\]"):
        load_splits(split_folder)


def test_train_val_layout_used(split_folder: Path):
    splits = load_splits(split_folder)
    assert splits.val_source == "folder"
    assert (len(splits.train), len(splits.val)) == (20, 8)


def test_split_when_no_val_folder(image_folder: Path):
    splits = load_splits(image_folder, val_fraction=0.25)
    assert splits.val_source == "split:0.25"
    assert len(splits.val) == 4 and len(splits.train) == 12
    assert not set(splits.train) & set(splits.val)
    assert {label for _, label in splits.val} == {0, 1}


def test_stratified_split_is_deterministic():
    samples = [(Path(f"{c}{i}"), c) for c in range(3) for i in range(10)]
    assert stratified_split(samples, 0.2, seed=3) == stratified_split(samples, 0.2, seed=3)
    assert stratified_split(samples, 0.2, seed=3) != stratified_split(samples, 0.2, seed=4)


def test_balanced_sample_spreads_over_classes():
    samples = [(Path(f"a{i}"), 0) for i in range(100)] + [(Path(f"b{i}"), 1) for i in range(5)]
    chosen = balanced_sample(samples, 8, seed=0)
    labels = [label for _, label in chosen]
    assert labels.count(0) == 4 and labels.count(1) == 4
    assert len(balanced_sample(samples, 1000)) == 105
