"""The frozen evaluation split: fixed at fine-tuning, immune to later changes of the dataset folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl.errors import DatasetError
from edgetl.run.split import read_split, write_split

from conftest import make_image_folder


def test_split_survives_new_photos_and_reports_changed_ones(tmp_path: Path):
    from edgetl.data import load_splits

    data = make_image_folder(tmp_path / "data", per_class=10)
    splits = load_splits(data, val_fraction=0.2)
    write_split(tmp_path, splits.classes, splits.train, splits.val, splits.val_source)
    make_image_folder(tmp_path / "more", per_class=3, seed=5)
    for path in (tmp_path / "more" / "cats").iterdir():  # a user adds photos to one class
        path.rename(data / "cats" / f"new-{path.name}")
    assert read_split(tmp_path, "val", splits.classes) == [(p.resolve(), label) for p, label in splits.val]
    assert len(read_split(tmp_path, "train", splits.classes)) == len(splits.train)
    victim = splits.val[0][0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # an evaluation image is replaced
    with pytest.raises(DatasetError, match="1 of the run's 4 val images are missing or changed"):
        read_split(tmp_path, "val", splits.classes)


def test_split_of_a_dataset_that_is_gone(tmp_path: Path):
    data = make_image_folder(tmp_path / "data", per_class=2)
    samples = [(p, 0) for p in sorted((data / "cats").iterdir())]
    write_split(tmp_path, ["cats", "dogs"], samples, samples, "folder")
    (data / "cats").rename(tmp_path / "elsewhere")
    (data / "dogs").rename(tmp_path / "elsewhere2")
    data.rmdir()
    with pytest.raises(DatasetError, match="is gone: pass --data"):
        read_split(tmp_path, "val", ["cats", "dogs"])
