"""Image folders: validation, train/val splits, loading, class-balanced sampling.

A dataset is ``ROOT/CLASS/*.jpg``; when ``ROOT`` holds ``train/`` and ``val/`` (or ``valid/``,
``validation/``), those are used as the split. Every image is checked once when the folder is
scanned, so a corrupt file is reported up front, not in the middle of epoch 7.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DatasetError, RunFolderError
from .run.keys import FINETUNE
from .run.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
VAL_DIR_NAMES = ("val", "valid", "validation")
DECODE_WORKERS = min(4, os.cpu_count() or 1)
"""Threads decoding evaluation images (PIL releases the GIL while decoding and resizing)."""


@dataclass
class ImageFolderScan:
    """What a folder holds: class names, usable samples and what was skipped or converted."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)
    """Images that are not RGB (grayscale, RGBA, palette ...), by PIL mode; converted on load."""

    def counts(self) -> dict[str, int]:
        tally = Counter(label for _, label in self.samples)
        return {name: tally[i] for i, name in enumerate(self.classes)}

    def summary(self) -> str:
        parts = [f"{len(self.samples)} images in {len(self.classes)} classes"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable skipped")
        if self.converted:
            parts.append("converted to RGB: " + ", ".join(f"{n} {m}" for m, n in sorted(self.converted.items())))
        return f"{self.root}: " + "; ".join(parts)


def _check_image(path: Path) -> tuple[str | None, str | None]:
    """(PIL mode, None) for a decodable image, (None, reason) otherwise."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's palette-transparency chatter
            with Image.open(path) as img:
                mode = img.mode
                img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads the whole stream
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # as load_rgb does: a broken EXIF block fails here
        return mode, None
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _is_run_folder(path: Path) -> bool:
    """An edgetl run folder (holds the manifest), or a ``runs/`` folder holding only run folders."""
    if (path / MANIFEST_NAME).is_file():
        return True
    if path.name != "runs":
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    subdirs = [p for p in entries if p.is_dir()]
    loose_images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries)
    return bool(subdirs) and not loose_images and all((p / MANIFEST_NAME).is_file() for p in subdirs)


def scan_image_folder(root: str | Path, *, strict: bool = False, classes: list[str] | None = None) -> ImageFolderScan:
    """Validate ``root/CLASS/*`` and list its images.

    Raises :class:`DatasetError` for a missing path, no class folders or an empty class. Corrupt
    images are skipped and counted, or raise when ``strict``. ``classes`` forces the expected class
    set (for a val folder that must match train).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root}")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_run_folder(sub):
            log.warning("ignoring %s: an edgetl run folder, not a class", sub)
        else:
            found.append(sub.name)
    if not found:
        raise DatasetError(f"{root} has no class subfolders: expected {root}/CLASS_NAME/image.jpg")
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DatasetError(
            f"{root} classes differ from the training classes: missing {missing or 'none'}, extra {extra or 'none'}")
    scan = ImageFolderScan(root=root, classes=found, samples=[])
    for label, name in enumerate(found):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        usable = 0
        for path in files:
            mode, problem = _check_image(path)
            if problem:
                if strict:
                    raise DatasetError(f"unreadable image {path} ({problem}); remove it or drop --strict to skip it")
                scan.skipped.append((path, problem))
                continue
            if mode != "RGB":
                scan.converted[mode] += 1
            scan.samples.append((path, label))
            usable += 1
        if not usable:
            raise DatasetError(f"class folder {root / name} has no readable images "
                               f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    for path, problem in scan.skipped:
        log.warning("skipped unreadable image %s: %s", path, problem)
    return scan


@dataclass
class DatasetSplits:
    classes: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    val_source: str
    """'folder' when a val folder was given, else 'split:<fraction>'."""
    scans: list[ImageFolderScan]

    @property
    def skipped(self) -> int:
        return sum(len(s.skipped) for s in self.scans)

    @property
    def converted(self) -> int:
        return sum(sum(s.converted.values()) for s in self.scans)


def find_val_dir(root: Path) -> Path | None:
    for name in VAL_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    return None


def load_splits(root: str | Path, *, val: str | Path | None = None, val_fraction: float = 0.2,
                seed: int = 0, strict: bool = False, shared_rng: bool = False) -> DatasetSplits:
    """Train and val samples from a dataset root (``train/``+``val/`` layout or a single class folder)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    train_dir = root / "train" if (root / "train").is_dir() else root
    val_dir = Path(val) if val is not None else (find_val_dir(root) if train_dir != root else None)
    train_scan = scan_image_folder(train_dir, strict=strict)
    if val_dir is not None:
        val_scan = scan_image_folder(val_dir, strict=strict, classes=train_scan.classes)
        return DatasetSplits(train_scan.classes, train_scan.samples, val_scan.samples, "folder",
                             [train_scan, val_scan])
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"no val folder in {root} and val fraction {val_fraction} is not in (0, 1)")
    train, held_out = stratified_split(train_scan.samples, val_fraction, seed, shared_rng=shared_rng)
    return DatasetSplits(train_scan.classes, train, held_out, f"split:{val_fraction}", [train_scan])


def stratified_split(samples: list[tuple[Path, int]], fraction: float, seed: int, *, shared_rng: bool = False
                     ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Hold out ``fraction`` of each class (at least one image when the class has two or more).

    Each class is shuffled by its own RNG (seeded from ``seed`` and its label), so adding images to one
    class leaves the split of the others as it was. ``shared_rng`` reproduces edgetl 0.1's split (one RNG
    for all classes) for runs made before the split was frozen.
    """
    by_class: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    shared = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        (shared if shared_rng else random.Random(f"{seed}:{label}")).shuffle(items)  # str seeds: stable
        n_val = min(len(items) - 1, max(1, round(len(items) * fraction))) if len(items) > 1 else 0
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return sorted(train), sorted(val)


def balanced_sample(samples: list[tuple[Path, int]], n: int, seed: int = 0) -> list[tuple[Path, int]]:
    """Up to ``n`` samples spread as evenly as possible over classes (for calibration)."""
    by_class: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rng = random.Random(seed)
    for items in by_class.values():
        rng.shuffle(items)
    chosen: list[tuple[Path, int]] = []
    queues = [by_class[k] for k in sorted(by_class)]
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return chosen


def load_rgb(path: Path):
    """Open an image upright (EXIF orientation applied) as RGB.

    Grayscale, RGBA and palette images are converted; 16-bit and float grayscale is scaled, not clipped.
    """
    from PIL import Image, ImageOps

    from .preprocessing import to_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            ImageOps.exif_transpose(img, in_place=True)  # phone photos: as displayed, not as stored
            return to_rgb(img)


class ImageListDataset:
    """A torch-style dataset over ``(path, label)`` pairs with a transform."""

    def __init__(self, samples: list[tuple[Path, int]], transform=None) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except Exception as exc:
            raise DatasetError(f"could not read {path} during training: {exc}") from exc
        return (self.transform(image) if self.transform else image), label


def make_loader(samples, transform, batch_size: int, *, shuffle: bool = False, workers: int = 0, seed: int = 0,
                shard: tuple[int, int] | None = None):
    """A DataLoader; a shuffled (training) loader drops a last batch of one image (BatchNorm cannot train on
    it) and starts fresh workers each epoch, so reseeding ``loader.generator`` fixes the whole epoch.

    ``shard=(rank, world)`` (multi-process training, shuffled): a ``DistributedSampler`` gives this rank its
    share of the epoch; ``loader.sampler.set_epoch(epoch)`` then fixes the epoch's order on every rank."""
    import torch
    from torch.utils.data import DataLoader

    # several processes: the sampler's seed orders the epoch alike everywhere; the generator seeds this
    # rank's loader workers, so ranks do not draw the same augmentations
    generator = torch.Generator().manual_seed(seed + (shard[0] if shard else 0))
    dataset = ImageListDataset(samples, transform)
    sampler, count = None, len(samples)
    if shard is not None and shard[1] > 1 and shuffle:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=shard[1], rank=shard[0], shuffle=True, seed=seed)
        count = len(sampler)
    single_last = shuffle and count > 1 and count % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, generator=generator, persistent_workers=workers > 0 and not shuffle,
                      drop_last=single_last)


def run_eval_samples(manifest, data: str | Path | None = None, split: str = "val", *,
                     verify: bool = True) -> list[tuple[Path, int]]:
    """The labelled images a run was validated (``split="val"``) or trained (``"train"``) on, from its
    frozen ``split.json``; or ``data``, a class folder with the run's classes."""
    from .run.split import SPLIT_NAME, read_split

    if data is not None:
        return scan_image_folder(Path(data), classes=manifest.classes).samples
    record = manifest.data.get("dataset") or {}
    if record.get("split") == SPLIT_NAME:
        from .run.integrity import verified_file

        _, digest = verified_file(manifest, SPLIT_NAME, verify=False)
        if verify and record.get("split_sha256") not in (None, digest):
            from .errors import IntegrityError

            raise IntegrityError(f"{manifest.run_dir / SPLIT_NAME} changed since fine-tuning froze it: restore it "
                                 "or pass --data FOLDER")
        return read_split(manifest.run_dir, split, manifest.classes)
    return _legacy_eval_samples(manifest, split)


def _legacy_eval_samples(manifest, split: str) -> list[tuple[Path, int]]:
    """Runs of edgetl 0.1 (manifest schema 1) froze no split: recompute it as 0.1 did."""
    stage = manifest.stage(FINETUNE)
    if not stage:
        raise DatasetError(f"{manifest.run_dir} records no dataset: pass --data FOLDER")
    opts = stage["options"]
    if not Path(opts["data"]).exists():
        raise DatasetError(f"the run's dataset {opts['data']} is gone: pass --data FOLDER with the classes "
                           f"{', '.join(manifest.classes)}")
    splits = load_splits(opts["data"], val=opts.get("val"), val_fraction=opts.get("val_fraction", 0.2),
                         seed=opts.get("seed", 0), shared_rng=True)
    if splits.classes != manifest.classes:
        raise DatasetError(f"{opts['data']} now has classes {splits.classes}, the run was trained on {manifest.classes}")
    return splits.val if split == "val" else splits.train


def read_preprocessed(path: Path, spec) -> np.ndarray:
    """One image file as ``spec`` preprocesses it (float32 CHW); an unreadable file is a one-line DatasetError."""
    return spec.normalize(_read_crop(path, spec)[None])[0]


def _read_crop(path: Path, spec) -> np.ndarray:
    try:
        return spec.crop(load_rgb(path))
    except Exception as exc:  # PIL raises many types for files that broke after the scan
        raise DatasetError(f"could not read {path}: {type(exc).__name__}: {exc}".splitlines()[0][:300]) from exc


def iter_batches(samples: list[tuple[Path, int]], spec, batch_size: int = 32, *, workers: int | None = None,
                 cache: _CropCache | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` batches of ``samples`` in order: float32 NCHW preprocessed by ``spec.apply``, int64.

    A generator: images are decoded one batch ahead of the consumer on a small thread pool (PIL releases
    the GIL), so memory holds two batches whatever the number of samples.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if not samples:
        raise DatasetError("no images to evaluate on")
    return _batches(list(samples), spec, batch_size, workers or DECODE_WORKERS, cache)


def _batches(samples: list[tuple[Path, int]], spec, batch_size: int, workers: int, cache: _CropCache | None = None
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix="edgetl-decode")

    def submit(start: int) -> list:
        return [pool.submit(_read_crop, path, spec) for path, _ in samples[start:start + batch_size]]

    try:
        pending = submit(0)
        for start in range(0, len(samples), batch_size):
            current, pending = pending, submit(start + batch_size)
            crops = np.stack([future.result() for future in current])
            if cache is not None:
                cache.append(crops)
            labels = np.array([label for _, label in samples[start:start + len(current)]], dtype=np.int64)
            yield spec.normalize(crops), labels
        if cache is not None:
            cache.complete = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _CropCache:
    """The uint8 crops of a whole pass, in an anonymous temporary file: later passes read them back instead
    of decoding again, and memory stays bounded (the file lives in the OS page cache, not in the process)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        import tempfile

        self.file = tempfile.TemporaryFile(prefix="edgetl-eval-")
        self.item_bytes = int(np.prod(shape))
        self.shape, self.count, self.complete = shape, 0, False

    def append(self, crops: np.ndarray) -> None:
        self.file.seek(self.count * self.item_bytes)
        self.file.write(np.ascontiguousarray(crops, dtype=np.uint8).tobytes())
        self.count += len(crops)

    def read(self, start: int, n: int) -> np.ndarray:
        self.file.seek(start * self.item_bytes)
        data = self.file.read(n * self.item_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(n, *self.shape)


class EvalImages:
    """The preprocessed images of labelled ``samples``, decoded on demand instead of held in memory.

    ``batches(n)`` streams them; a slice (``images[:8]``) or an index decodes only the images asked for,
    so an evaluation keeps whole only the few it needs (a latency batch, a sensitivity sample).
    """

    def __init__(self, samples: list[tuple[Path, int]], spec, *, workers: int | None = None,
                 cache: bool = True) -> None:
        if not samples:
            raise DatasetError("no images to evaluate on")
        self.samples, self.spec, self.workers = list(samples), spec, workers
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.cache = cache
        """Keep the first full pass's uint8 crops in a temporary file, so later passes skip decoding."""
        self._crops: _CropCache | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.spec.input_size, self.spec.input_size)

    def batches(self, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._crops is not None and self._crops.complete and batch_size >= 1:
            return self._cached_batches(batch_size)
        size = self.spec.input_size
        self._crops = _CropCache((size, size, 3)) if self.cache else None
        return iter_batches(self.samples, self.spec, batch_size, workers=self.workers, cache=self._crops)

    def _cached_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.samples), batch_size):
            n = min(batch_size, len(self.samples) - start)
            yield self.spec.normalize(self._crops.read(start, n)), self.labels[start:start + n]

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            chosen = self.samples[key]
            return load_array(chosen, self.spec)[0] if chosen else np.empty((0, *self.shape[1:]), np.float32)
        return read_preprocessed(self.samples[key][0], self.spec)

    def __iter__(self) -> Iterator[np.ndarray]:
        for images, _ in self.batches():
            yield from images


def image_batches(images: np.ndarray | EvalImages, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of an in-memory NCHW array, or of :class:`EvalImages` (decoded as they go)."""
    if isinstance(images, EvalImages):
        return (batch for batch, _ in images.batches(batch_size))
    return (images[start:start + batch_size] for start in range(0, len(images), batch_size))


def load_array(samples: list[tuple[Path, int]], spec, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` (the first ``limit``) preprocessed into one float32 NCHW array and an int64 label array.

    For a few images only (a latency batch, a sensitivity sample): stream a whole eval set with
    :func:`iter_batches` or :class:`EvalImages`.
    """
    chosen = samples[:limit] if limit else samples
    batches = list(iter_batches(chosen, spec, max(1, len(chosen))))
    return batches[0]


def load_run_splits(manifest: Any, options: dict[str, Any]) -> DatasetSplits:
    """The run's frozen train and val images (:class:`DatasetSplits`) for a training that continues
    it: resumed, or a pruned child's recovery. A run made before splits were frozen: recomputed from
    ``options`` (its recorded ``finetune`` options) as it was then."""
    from .run.split import SPLIT_NAME

    if (manifest.data.get("dataset") or {}).get("split") == SPLIT_NAME:
        train, val = run_eval_samples(manifest, split="train"), run_eval_samples(manifest, split="val")
        return DatasetSplits(manifest.classes, train, val, manifest.data["dataset"].get("val_source", ""), [])
    splits = load_splits(options["data"], val=options.get("val"), val_fraction=options.get("val_fraction", 0.2),
                         seed=options.get("seed", 0), strict=options.get("strict", False), shared_rng=True)
    if splits.classes != manifest.classes:
        raise RunFolderError(f"the dataset's classes {splits.classes} are not the run's {manifest.classes}")
    return splits
