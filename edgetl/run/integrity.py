"""Trust, but check: recorded sha256s before a file is used, staleness of derived stages, run status.

A stage records the sha256 of each run file it read (``inputs``). It is *stale* when one of those
files has since been re-recorded with another checksum by the stage that produces it (a resumed
fine-tune writes a new ``checkpoint.pt``: the ONNX export and everything built from it are stale),
or when a stage it depends on is stale. A file whose bytes no longer match its own record was
*modified* behind edgetl's back: using it is refused unless the caller opts out (``--no-verify``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._io import sha256
from ..errors import IntegrityError, RunFolderError
from .keys import RunState, StageKey, StageKind, Status, is_done, try_parse
from .manifest import Manifest
from .safe_paths import run_file


def rerun_hint(stage: str | StageKey, run_dir: Path) -> str:
    """The command that (re)produces ``stage``: each stage says, through the stage table (:mod:`edgetl.stages`,
    a layer above this one, so looked up by name when a hint is needed, never imported with the run API)."""
    import importlib

    return importlib.import_module("edgetl.stages").rerun_hint(stage, run_dir)


def verified_file(manifest: Manifest, rel: str, *, verify: bool = True) -> tuple[Path, str]:
    """``RUN/rel`` and its sha256, after checking it against the record of the stage that wrote it.

    Missing file or record: :class:`RunFolderError`. Different bytes: :class:`IntegrityError`, unless
    ``verify`` is False (for people who edit artifacts on purpose); the actual sha256 is returned either way.
    A symlink leaving the run folder is refused whatever ``verify`` says (:func:`~.safe_paths.run_relative`).
    """
    path = run_file(manifest.run_dir, rel)
    found = manifest.producer(rel)
    if not path.is_file():
        hint = rerun_hint(found[0], manifest.run_dir) if found else "re-run the stage that writes it"
        raise RunFolderError(f"{path} is missing: {hint}")
    actual = sha256(path)
    if not verify:
        return path, actual
    if found is None:
        raise IntegrityError(f"{path} is not recorded in {manifest.path}, so it cannot be trusted: re-run the stage "
                             "that writes it, or pass --no-verify to use it anyway")
    stage_name, record, sub = found
    if actual != record.digest(sub):
        raise IntegrityError(f"{path} does not match the sha256 recorded by stage '{stage_name}' (it changed after "
                             f"edgetl wrote it): re-run `{rerun_hint(stage_name, manifest.run_dir)}`, or pass "
                             "--no-verify if you changed it on purpose")
    return path, actual


def stale_reason(manifest: Manifest, stage: str | StageKey, _seen: frozenset[str] = frozenset()) -> str | None:
    """Why ``stage`` no longer reflects its inputs, or None when it is current (or cannot tell: schema 1)."""
    stage = str(stage)
    record = manifest.record(stage)
    if record is None or stage in _seen:
        return None
    if (manifest.parent or {}).get("stage") == stage:  # the stage that made this run from its parent
        changed = _parent_changed(manifest.parent)
        if changed:
            return changed
    for rel, digest in record.inputs.items():
        found = manifest.producer(rel)
        if found is None:
            return f"its input {rel} is no longer recorded"
        producer, artifact, sub = found
        if artifact.digest(sub) != digest:
            return f"{rel} was rewritten by '{producer}' after this stage read it"
        upstream = stale_reason(manifest, producer, _seen | {stage})
        if upstream:
            return f"'{producer}' is stale ({upstream})"
    return None


def _parent_changed(lineage: dict[str, Any]) -> str | None:
    """Which of the parent's files this run was made from have been re-recorded since (None when none
    has, or when the parent run is gone: this run holds its own weights)."""
    try:
        parent = Manifest.load(lineage["run"])
    except (RunFolderError, OSError, KeyError):
        return None
    for rel, digest in lineage.get("inputs", {}).items():
        if parent.recorded_sha256(rel) != digest:
            found = parent.producer(rel)
            by = f" by '{found[0]}'" if found else ""
            return f"the parent's {rel} was rewritten{by} after this run was made from it ({lineage['run']})"
    return None


def budget_miss(metrics: dict[str, Any]) -> str:
    """One line on a build that missed its budget, from its recorded metrics."""
    drop, budget = metrics.get("drop_points"), metrics.get("max_drop")
    if drop is None or budget is None:
        return "the accuracy budget was not met"
    return f"top-1 drop {drop:.2f} points > budget {budget:g} ({metrics.get('method', '?')}): not packaged by default"


def superseded_by(manifest: Manifest, stage: str | StageKey) -> str | None:
    """For a PTQ build that missed its budget: its current QAT build that met the budget (``TARGET:int8:qat``)."""
    key = try_parse(str(stage))
    if key is None or key.kind is not StageKind.BUILD:
        return None
    qat = StageKey.qat(key.target or "", key.precision or "")
    record = manifest.record(qat)
    if record is None or record.status != Status.COMPLETE or stale_reason(manifest, qat):
        return None
    return str(qat)


def require_current(manifest: Manifest, stage: str | StageKey) -> None:
    """Raise :class:`StaleArtifactError` when ``stage`` is stale."""
    from ..errors import StaleArtifactError

    reason = stale_reason(manifest, stage)
    if reason:
        raise StaleArtifactError(f"stage '{stage}' of {manifest.run_dir} is stale: {reason}; "
                                 f"re-run `{rerun_hint(stage, manifest.run_dir)}`")


@dataclass
class StageState:
    """One line of ``edgetl status``."""

    stage: str
    status: str
    """The recorded status: complete, running, failed, interrupted, budget-missed."""
    state: str
    """current, stale, modified, missing, unsafe (a symlink leaving the run), busy (being written now), or the
    recorded status."""
    detail: str = ""
    files: dict[str, str] = field(default_factory=dict)
    """Files that are modified or missing, with what is wrong."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


UNSAFE = "a symlink leaving the run folder"


def _file_problem(manifest: Manifest, rel: str, digest: str) -> str | None:
    """What is wrong with a recorded file: unsafe, missing, modified, or None (never reads outside the run)."""
    try:
        file = run_file(manifest.run_dir, rel)
    except RunFolderError:
        return UNSAFE
    if not file.is_file():
        return RunState.MISSING
    return RunState.MODIFIED if sha256(file) != digest else None


def run_status(run_dir: str | Path) -> list[StageState]:
    """What is current, stale, modified or missing in a run folder (nothing is changed)."""
    from .lock import stage_busy

    manifest = Manifest.load(run_dir)
    states = []
    for name in manifest.stages:
        record = manifest.record(name)
        status = record.status or "?"
        problems = {rel: problem for rel, digest in manifest.recorded_files(name).items()
                    if (problem := _file_problem(manifest, rel, digest))}
        stale = stale_reason(manifest, name)
        if stage_busy(manifest.run_dir, name):
            state, detail = RunState.BUSY, f"being written by another process (pid {record.pid or '?'})"
        elif not is_done(status):
            state, detail = status, record.error or ""
        elif UNSAFE in problems.values():
            unsafe = [rel for rel, problem in problems.items() if problem == UNSAFE]
            state, detail = RunState.UNSAFE, f"{', '.join(unsafe)}: {UNSAFE}; replace it with the file itself"
        elif problems:
            state = RunState.MISSING if RunState.MISSING in problems.values() else RunState.MODIFIED
            detail = f"{len(problems)} file(s) {state}: re-run `{rerun_hint(name, manifest.run_dir)}`"
        elif stale:
            state, detail = RunState.STALE, f"{stale}: re-run `{rerun_hint(name, manifest.run_dir)}`"
        elif status == Status.BUDGET_MISSED and (qat := superseded_by(manifest, name)):
            state, detail = RunState.CURRENT, f"{budget_miss(record.metrics).split(':')[0]}; superseded by {qat}"
        elif status == Status.BUDGET_MISSED:
            state, detail = RunState.BUDGET_MISSED, budget_miss(record.metrics)
        else:
            state, detail = RunState.CURRENT, ""
        states.append(StageState(name, status, str(state), detail, {rel: str(p) for rel, p in problems.items()}))
    return states
