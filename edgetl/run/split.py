"""The frozen dataset split of a run (``RUN/split.json``), fixed when fine-tuning starts.

Every later stage (parity, target builds, calibration, bench, resume) reads its images from here
instead of re-scanning the dataset, so all of them measure on exactly the images fine-tuning
validated on, even after photos are added to the folder. Each file is listed with its size; a
listed image that is gone or has another size is reported, never silently replaced.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .._io import read_json, write_json
from ..errors import DatasetError, RunFolderError

log = logging.getLogger(__name__)
SPLIT_NAME = "split.json"
SPLIT_SCHEMA = 1


def _common_root(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path("/")


def _section(samples: list[tuple[Path, int]]) -> dict[str, Any]:
    resolved = [(Path(p).resolve(), label) for p, label in samples]
    root = _common_root([p for p, _ in resolved])
    return {"root": str(root),
            "files": [[p.relative_to(root).as_posix(), int(label), p.stat().st_size] for p, label in resolved]}


def write_split(run_dir: Path, classes: list[str], train: list[tuple[Path, int]], val: list[tuple[Path, int]],
                source: str) -> Path:
    """Freeze ``train``/``val`` (resolved paths, labels, sizes) into ``run_dir/split.json``."""
    data = {"schema": SPLIT_SCHEMA, "classes": list(classes), "val_source": source,
            "train": _section(train), "val": _section(val)}
    return write_json(Path(run_dir) / SPLIT_NAME, data)


def read_split(run_dir: Path, part: str, classes: list[str], *, check_files: bool = True
               ) -> list[tuple[Path, int]]:
    """The frozen ``part`` ("train" or "val") of a run; a one-line error if its images moved or changed."""
    path = Path(run_dir) / SPLIT_NAME
    data = read_json(path, RunFolderError, f"{run_dir} has no {SPLIT_NAME}", "re-run fine-tuning")
    if not isinstance(data, dict) or data.get("classes") != classes or part not in data:
        raise RunFolderError(f"{path} does not describe this run's {part} images (classes {classes})")
    section = data[part]
    root = Path(section["root"])
    samples = [(root / rel, int(label)) for rel, label, _ in section["files"]]
    if check_files and samples:
        if not root.exists():
            raise DatasetError(f"the run's dataset {root} is gone: pass --data FOLDER with the classes "
                               f"{', '.join(classes)}")
        bad = [str(root / rel) for rel, _, size in section["files"] if _size(root / rel) != size]
        if bad:
            raise DatasetError(f"{len(bad)} of the run's {len(samples)} {part} images are missing or changed since "
                               f"fine-tuning (first: {bad[0]}): restore them, or pass --data FOLDER to evaluate on "
                               "another labelled folder")
    return samples


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def copy_split(parent_dir: Path, child_dir: Path) -> Path:
    """A derived run (pruned child, search trial) measures on its parent's frozen split."""
    import shutil

    target = Path(child_dir) / SPLIT_NAME
    shutil.copyfile(Path(parent_dir) / SPLIT_NAME, target)
    return target

