"""Calibration and validation images for quantization: class-balanced, decoded lazily a batch at a time.

Calibration images are sampled class-balanced from the run's training split (or ``--calib-data``) and
preprocessed with the run's own spec (``PreprocessSpec.apply``), so a large calibration set does not have
to fit in memory; accuracy-control validation images are decoded on demand too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...data import EvalImages, balanced_sample, image_batches, run_eval_samples, scan_image_folder
from ...errors import DatasetError

log = logging.getLogger(__name__)


# -- calibration data ---------------------------------------------------------------------

def calibration_samples(manifest: Any, calib_data: str | Path | None, size: int, seed: int = 0
                        ) -> list[tuple[Path, int]]:
    """Up to ``size`` class-balanced images of the run's classes; warns when fewer are available."""
    if calib_data is not None:
        try:
            pool = scan_image_folder(Path(calib_data), classes=manifest.classes).samples
        except DatasetError as exc:
            raise DatasetError(f"calibration data: {exc}") from exc
        source = str(calib_data)
    else:
        pool = run_eval_samples(manifest, split="train")
        source = "the run's training split"
    chosen = balanced_sample(pool, size, seed=seed)
    if len(chosen) < size:
        log.warning("calibration uses only %d images (asked for %d; %s has no more): INT8 ranges may be "
                    "less accurate", len(chosen), size, source)
    return chosen


class CalibrationImages:
    """Preprocessed NCHW batches of one image, decoded when NNCF iterates (memory stays flat)."""

    def __init__(self, samples: list[tuple[Path, int]], spec: Any) -> None:
        self.images = EvalImages(samples, spec)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        for image in self.images:
            yield image[None]


class LabelledImages:
    """``(image CHW, label)`` items of an NCHW array or :class:`EvalImages`; indexable, so NNCF decodes only
    the items of a subset it picks, and a full pass streams decoded batches."""

    def __init__(self, images: Any, labels: np.ndarray, decode_batch: int = 32) -> None:
        self.images, self.labels, self.decode_batch = images, labels, decode_batch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], self.labels[index]

    def __iter__(self):
        start = 0
        for batch in image_batches(self.images, self.decode_batch):
            yield from zip(batch, self.labels[start:start + len(batch)])
            start += len(batch)
