"""Locks of a run folder (OS file locks via ``filelock``: released by the OS when a process dies).

* the manifest lock: held for the few milliseconds of a read-merge-write of ``edgetl.json``;
* a stage lock per stage name: held while a process writes that stage (a whole training, a build),
  so a second writer of the same stage is refused at once instead of corrupting the first one's files.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import RunBusyError
from .keys import StageKey

LOCK_DIR = ".locks"
MANIFEST_LOCK_TIMEOUT_S = 60.0


def _lock_path(run_dir: Path, name: str) -> Path:
    folder = Path(run_dir) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")


@contextlib.contextmanager
def manifest_lock(run_dir: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(_lock_path(run_dir, "manifest"), timeout=MANIFEST_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusyError(f"{run_dir}: could not lock edgetl.json for {MANIFEST_LOCK_TIMEOUT_S:.0f} s "
                           "(another edgetl process holds it); try again") from None
    try:
        yield
    finally:
        lock.release()


class StageLock:
    """Exclusive right to write one stage of one run; acquiring fails at once when someone holds it."""

    def __init__(self, run_dir: str | Path, stage: str | StageKey) -> None:
        from filelock import FileLock

        self.run_dir, self.stage = Path(run_dir), str(stage)
        self._lock = FileLock(_lock_path(self.run_dir, "stage-" + self.stage), timeout=0)

    def acquire(self, busy_hint: str = "wait for it to finish") -> StageLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise RunBusyError(f"stage '{self.stage}' of {self.run_dir} is being written by another edgetl "
                               f"process right now: {busy_hint}") from None
        return self

    def release(self) -> None:
        self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def __enter__(self) -> StageLock:
        # ``with StageLock(...).acquire(hint):`` is already held: taking it a second time would leave it held
        # (filelock counts) for as long as the object lives, e.g. in a traceback kept by the caller
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release(force=True)


def stage_busy(run_dir: str | Path, stage: str | StageKey) -> bool:
    """Whether another process is writing ``stage`` of ``run_dir`` now (probes without keeping the lock)."""
    if not (Path(run_dir) / LOCK_DIR).is_dir():
        return False
    probe = StageLock(run_dir, stage)
    try:
        probe.acquire()
    except RunBusyError:
        return True
    probe.release()
    return False
