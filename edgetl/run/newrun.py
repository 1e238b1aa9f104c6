"""Where a new run may be written, and how it replaces an old one without losing it early.

A new run is written into a hidden staging folder beside its final place and moved there once it
has something to show (its first checkpoint). ``--overwrite`` only ever replaces an edgetl run
folder (or an empty folder), never one that holds the dataset, and the old run stays until the new
one is moved in: a failure before the first epoch leaves the old run as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .._io import current_umask
from ..errors import ConfigError, RunFolderError
from .keys import FINETUNE
from .lock import StageLock
from .manifest import Manifest, is_run_folder

log = logging.getLogger(__name__)
STAGING_PREFIX = ".edgetl-new-"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def default_output(data_root: Path, name: str) -> Path:
    """``./runs/NAME``, unless that lands inside the dataset: then ``runs/NAME`` beside the dataset."""
    candidate = (Path("runs") / name).resolve()
    if _inside(candidate, data_root):
        candidate = data_root.parent / "runs" / name
        log.info("the working directory is inside the dataset: writing the run to %s", candidate)
    return candidate


def check_output(output: Path, data_roots: list[Path], *, overwrite: bool) -> Path:
    """The resolved run folder for a new run; a one-line error when it may not be (re)written."""
    out = output.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {output} is a file, not a folder: choose a folder for the run")
    check_outside_data(out, data_roots, f"--output {output}")
    if out.is_dir() and any(out.iterdir()):
        if not is_run_folder(out):
            raise RunFolderError(f"{output} exists and is not an edgetl run folder; --overwrite only replaces run "
                                 "folders: choose another --output")
        if not overwrite:
            raise RunFolderError(f"run folder {output} already exists: use --resume to continue it, "
                                 "--overwrite to replace it, or --output for a new one")
        try:  # an edgetl.json that is not a manifest does not make a folder edgetl's to delete
            Manifest.load(out)
        except RunFolderError as exc:
            raise RunFolderError(f"{output} is not an edgetl run folder ({exc}); --overwrite only replaces run "
                                 "folders: choose another --output") from None
    return out


def check_outside_data(out: Path, data_roots: list[Path], shown: str) -> None:
    """A one-line error when the resolved ``out`` holds or lies inside a dataset folder (``shown``: the option
    and path as given, for the message)."""
    for root in data_roots:
        if _inside(root, out):
            raise ConfigError(f"{shown} holds the dataset {root}: choose a path outside the data")
        if _inside(out, root):
            raise ConfigError(f"{shown} is inside the dataset {root} (it would be read as images or a class next "
                              "time): choose a path outside the data")


class RunStaging:
    """A hidden folder beside ``final`` that becomes ``final`` when :meth:`promote` is called."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.promoted = False
        self._old_lock: StageLock | None = None
        if is_run_folder(final):  # nobody may be training the run we are about to replace (checked first,
            self._old_lock = StageLock(final, FINETUNE).acquire("it cannot be replaced while it trains")
        try:  # so that a refusal leaves no staging folder behind)
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned(final)
            self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}-", dir=final.parent))
            os.chmod(self.path, 0o777 & ~current_umask())
        except BaseException:
            self._release_old()
            raise

    def promote(self) -> Path:
        """Move the staged run into place, replacing an old run folder (kept until this moment)."""
        old = None
        if self.final.exists():
            old = self.final.with_name(f".edgetl-old-{self.final.name}-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        self.promoted = True
        self._release_old()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        if not self.promoted:
            shutil.rmtree(self.path, ignore_errors=True)
        self._release_old()

    def _release_old(self) -> None:
        if self._old_lock is not None:
            self._old_lock.release()
            self._old_lock = None


def remove_abandoned(final: Path) -> None:
    """Staging folders of killed runs for the same output (their stage lock is free)."""
    from .lock import stage_busy

    for leftover in final.parent.glob(f"{STAGING_PREFIX}{final.name}-*"):
        if leftover.is_dir() and not stage_busy(leftover, FINETUNE):
            shutil.rmtree(leftover, ignore_errors=True)
