"""``with stage(manifest, name, options, inputs) as st:`` — the one way a stage writes into a run.

Entering takes the stage's lock (a second writer is refused), verifies each input file against its
record and records its sha256, and marks the stage ``running``. Leaving normally records the
artifacts and metrics and marks it ``complete`` (or ``st.status``); leaving by an exception marks it
``failed`` (``interrupted`` for Ctrl-C) with a one-line reason, and re-raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .integrity import verified_file
from .lock import StageLock
from .keys import StageKey, Status
from .manifest import Manifest, plain
from .records import ArtifactRecord


@dataclass
class StageWriter:
    manifest: Manifest
    name: str
    inputs: dict[str, str]
    """Run-relative input files, verified, with their sha256."""
    metrics: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.COMPLETE
    record: dict[str, Any] = field(default_factory=dict)
    """Other entries of the stage record, written when it completes (a training's ``history``)."""
    _artifacts: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    def artifact(self, path: str | Path, **extra: Any) -> None:
        """Record ``path`` (a file or a folder inside the run) when the stage completes."""
        self._artifacts.append((Path(path), ArtifactRecord.describing(**extra)))


def verify_inputs(manifest: Manifest, inputs: Iterable[str], *, verify: bool = True) -> dict[str, str]:
    """sha256 of each run-relative input, checked against its record (see :func:`verified_file`)."""
    return {rel: verified_file(manifest, rel, verify=verify)[1] for rel in inputs}


def failure_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


@contextlib.contextmanager
def stage(manifest: Manifest, name: str | StageKey, options: Mapping[str, Any], inputs: Iterable[str] | Mapping[str, str] = (),
          *, verify: bool = True, busy_hint: str = "wait for it to finish", reopen: bool = False,
          lock: StageLock | None = None) -> Iterator[StageWriter]:
    """Run one stage of ``manifest``'s run; see the module docstring. ``inputs`` are run-relative paths, or a
    mapping of paths to sha256s the caller has already verified with :func:`verify_inputs`.

    ``reopen``: continue the stage's existing record (a resumed training): ``options`` only updates the
    recorded ones, and its inputs and artifacts stay. ``lock``: the stage's lock, already held by the caller
    (who releases it)."""
    name = str(name)
    held = lock is not None
    lock = lock if held else StageLock(manifest.run_dir, name).acquire(busy_hint)
    try:
        if reopen:
            digests = dict(manifest.reopen(name, options).get("inputs") or {})
        else:
            digests = dict(inputs) if isinstance(inputs, Mapping) else verify_inputs(manifest, inputs, verify=verify)
            manifest.begin(name, options, inputs=digests)
        writer = StageWriter(manifest, name, digests)
        try:
            yield writer
            for path, extra in writer._artifacts:
                manifest.add_artifact(name, path, **extra)
            manifest.stages[name].update(plain(writer.record))
        except BaseException as exc:
            status = Status.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else Status.FAILED
            manifest.fail(name, failure_reason(exc), status)
            raise
        manifest.finish(name, writer.metrics, status=writer.status)
    finally:
        if not held:
            lock.release()
