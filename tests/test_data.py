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


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path):
    import numpy as np

    arr = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64746
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I;16")
    rgb = np.asarray(load_rgb(tmp_path / "deep.png")).astype(int)
    assert rgb.shape == (30, 40, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - np.rint(arr / 257)).max() <= 1


def test_16bit_pgm_mode_i_is_scaled(tmp_path: Path):
    import numpy as np

    arr = (np.arange(20 * 20, dtype=np.uint32).reshape(20, 20) * 160).astype(np.uint16)  # 0 .. 63840
    Image.fromarray(arr).save(tmp_path / "deep.pgm")
    rgb = np.asarray(load_rgb(tmp_path / "deep.pgm")).astype(int)
    assert np.abs(rgb[..., 1] - np.rint(arr / 257)).max() <= 1


def test_float_image_in_unit_range_is_scaled(tmp_path: Path):
    import numpy as np

    arr = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(arr, "F").save(tmp_path / "float.tif")
    rgb = np.asarray(load_rgb(tmp_path / "float.tif")).astype(int)
    assert np.abs(rgb[..., 2] - np.rint(arr * 255)).max() <= 1


def test_exif_orientation_is_applied(tmp_path: Path):
    import numpy as np

    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high: red left half, blue right half
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # camera held rotated: display turned 90 degrees clockwise
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_rgb(tmp_path / "phone.jpg")
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10].astype(int), np.asarray(upright)[34, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_rotated_images_scan_cleanly(tmp_path: Path):
    root = make_image_folder(tmp_path / "data", per_class=3)
    img = Image.new("RGB", (40, 20), (200, 40, 40))
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(root / "cats" / "phone.jpg", exif=exif)
    scan = scan_image_folder(root, strict=True)
    assert scan.counts() == {"cats": 4, "dogs": 3}
    assert not scan.converted and not scan.skipped


def test_split_of_other_classes_unchanged_when_a_class_grows(tmp_path: Path):
    root = make_image_folder(tmp_path / "data", classes=("birds", "cats", "dogs"), per_class=10)
    before = load_splits(root, val_fraction=0.25)
    for extra in range(1, 4):  # one photo at a time into the first class
        Image.new("RGB", (40, 40), (40, 180, 40)).save(root / "birds" / f"new{extra}.png")
        after = load_splits(root, val_fraction=0.25)
        assert len(after.train) + len(after.val) == len(before.train) + len(before.val) + extra
        for label in (1, 2):
            assert [s for s in after.val if s[1] == label] == [s for s in before.val if s[1] == label]
            assert [s for s in after.train if s[1] == label] == [s for s in before.train if s[1] == label]


def test_stratified_split_keeps_one_val_image_per_class():
    samples = [(Path(f"{c}{i}"), c) for c in range(3) for i in range(2 + c)]
    train, val = stratified_split(samples, 0.01, seed=0)
    assert sorted(label for _, label in val) == [0, 1, 2]
    assert len(train) == len(samples) - 3


def test_run_folders_inside_dataset_are_not_classes(tmp_path: Path, caplog):
    root = make_image_folder(tmp_path / "data", per_class=3)
    for run in ("runs/x", "runs/y", "lone_run"):
        (root / run).mkdir(parents=True)
        (root / run / "edgetl.json").write_text("{}")
        Image.new("RGB", (8, 8)).save(root / run / "confusion.png")
    with caplog.at_level("WARNING", logger="edgetl.data"):
        scan = scan_image_folder(root)
    assert scan.classes == ["cats", "dogs"]
    assert scan.counts() == {"cats": 3, "dogs": 3}
    assert "runs" in caplog.text and "lone_run" in caplog.text


def test_runs_class_with_images_is_kept(tmp_path: Path):
    root = make_image_folder(tmp_path / "data", classes=("cats", "runs"), per_class=3)
    (root / "runs" / "x").mkdir()
    (root / "runs" / "x" / "edgetl.json").write_text("{}")
    assert scan_image_folder(root).classes == ["cats", "runs"]


# -- streaming evaluation images -------------------------------------------------------------

def _eval_samples(tmp_path: Path) -> list[tuple[Path, int]]:
    """Three classes, 7 images each, in an interleaved (non-sorted) order."""
    root = make_image_folder(tmp_path / "eval", classes=("cats", "dogs", "birds"), per_class=7, size=24)
    scan = scan_image_folder(root)
    return scan.samples[::2] + scan.samples[1::2]


def _counting_load_rgb(monkeypatch) -> list[Path]:
    import edgetl.data

    calls: list[Path] = []
    real = edgetl.data.load_rgb

    def counted(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(edgetl.data, "load_rgb", counted)
    return calls


def test_iter_batches_keeps_order_labels_and_pixels(tmp_path: Path):
    import numpy as np

    from edgetl.data import iter_batches
    from edgetl.preprocessing import PreprocessSpec

    samples = _eval_samples(tmp_path)
    spec = PreprocessSpec(input_size=16, resize_size=20)
    batches = list(iter_batches(samples, spec, 4, workers=3))
    assert [len(images) for images, _ in batches] == [4, 4, 4, 4, 4, 1]
    images = np.concatenate([b for b, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    assert images.dtype == np.float32 and images.shape == (21, 3, 16, 16) and labels.dtype == np.int64
    assert labels.tolist() == [label for _, label in samples]
    np.testing.assert_array_equal(images, np.stack([spec.apply(load_rgb(p)) for p, _ in samples]))


def test_iter_batches_is_lazy(tmp_path: Path, monkeypatch):
    """Nothing is decoded until the first batch is asked for; then that batch and at most the next one."""
    import inspect
    import time

    from edgetl.data import iter_batches
    from edgetl.preprocessing import PreprocessSpec

    calls = _counting_load_rgb(monkeypatch)
    stream = iter_batches(_eval_samples(tmp_path), PreprocessSpec(input_size=16, resize_size=20), 3)
    assert inspect.isgenerator(stream) and calls == []
    images, _ = next(stream)
    time.sleep(0.5)  # time for the pool to decode whatever it was given (21 tiny images take ~20 ms)
    assert len(images) == 3 and 3 <= len(calls) <= 6  # this batch + the one decoded ahead
    next(stream)
    time.sleep(0.5)
    assert 6 <= len(calls) <= 9
    stream.close()
    assert len(calls) <= 9


def test_eval_images_decode_only_what_is_asked(tmp_path: Path, monkeypatch):
    import numpy as np

    from edgetl.data import EvalImages, image_batches, load_array
    from edgetl.preprocessing import PreprocessSpec

    samples = _eval_samples(tmp_path)
    spec = PreprocessSpec(input_size=16, resize_size=20)
    images = EvalImages(samples, spec)
    calls = _counting_load_rgb(monkeypatch)
    assert len(images) == 21 and images.shape == (21, 3, 16, 16) and calls == []
    assert images.labels.tolist() == [label for _, label in samples]
    head = images[:5]
    assert head.shape == (5, 3, 16, 16) and sorted(calls) == sorted(p for p, _ in samples[:5])
    np.testing.assert_array_equal(images[7], spec.apply(load_rgb(samples[7][0])))
    whole, labels = load_array(samples, spec)
    np.testing.assert_array_equal(np.concatenate(list(image_batches(images, 8))), whole)
    np.testing.assert_array_equal(np.concatenate(list(image_batches(whole, 8))), whole)
    assert labels.tolist() == images.labels.tolist()


def test_iter_batches_errors(tmp_path: Path):
    from edgetl.data import EvalImages, iter_batches
    from edgetl.errors import ConfigError
    from edgetl.preprocessing import PreprocessSpec

    spec = PreprocessSpec(input_size=16, resize_size=20)
    with pytest.raises(DatasetError, match="no images"):
        iter_batches([], spec)
    with pytest.raises(DatasetError, match="no images"):
        EvalImages([], spec)
    samples = _eval_samples(tmp_path)
    with pytest.raises(ConfigError, match="batch size"):
        iter_batches(samples, spec, 0)
    samples[5][0].write_bytes(b"gone bad after the scan")
    with pytest.raises(DatasetError, match=f"could not read .*{samples[5][0].name}"):
        list(iter_batches(samples, spec, 4))


def test_eval_images_decode_once_and_replay_identical_batches(image_folder: Path, monkeypatch):
    """Builds evaluate several models on the same images: later passes read the cached crops, bit-identical."""
    import numpy as np

    import edgetl.data as data_module
    from edgetl.data import EvalImages, scan_image_folder
    from edgetl.preprocessing import PreprocessSpec

    samples = scan_image_folder(image_folder).samples
    spec = PreprocessSpec(input_size=32, resize_size=36)
    calls = []
    real = data_module.load_rgb
    monkeypatch.setattr(data_module, "load_rgb", lambda path: calls.append(path) or real(path))
    images = EvalImages(samples, spec)
    first = [(x.copy(), y.copy()) for x, y in images.batches(5)]
    assert len(calls) == len(samples)
    second = list(images.batches(3))  # another batch size, from the cache
    assert len(calls) == len(samples)
    assert np.array_equal(np.concatenate([x for x, _ in first]), np.concatenate([x for x, _ in second]))
    assert np.array_equal(np.concatenate([y for _, y in second]), images.labels)
    assert np.array_equal(second[0][0][0], spec.apply(real(samples[0][0])))
