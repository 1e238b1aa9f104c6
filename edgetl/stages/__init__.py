"""The stage table: every step of the pipeline, by kind. ``edgetl status``, rerun hints, resume and the CLI
read it; a new stage (QAT, say) is one module here and one line in :data:`STAGES`.

Entries are ``module:Class`` strings, imported on first use, so reading the table stays light.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..run.keys import StageKey, StageKind, try_parse
from .base import Stage, load_attr

STAGES: dict[StageKind, str] = {
    StageKind.FINETUNE: "edgetl.stages.finetune:Finetune",
    StageKind.PRUNE: "edgetl.stages.prune:Prune",
    StageKind.ONNX: "edgetl.stages.export:Export",
    StageKind.BUILD: "edgetl.stages.build:Build",
    StageKind.ENGINE: "edgetl.stages.compile:Compile",
    StageKind.QAT: "edgetl.stages.qat:QAT",
    StageKind.BENCH: "edgetl.stages.bench:Bench",
    StageKind.TUNE: "edgetl.stages.tune:Tune",
    StageKind.PACKAGE: "edgetl.stages.package:Package",
}


@functools.cache
def stage_for(kind: StageKind | str) -> Stage:
    """The stage of ``kind`` (a :class:`StageKind` or its value)."""
    return load_attr(STAGES[StageKind(kind)])()


def all_stages() -> list[Stage]:
    return [stage_for(kind) for kind in STAGES]


def rerun_hint(name: str | StageKey, run_dir: Path) -> str:
    """The command that (re)produces the stage ``name`` of ``run_dir``."""
    key = name if isinstance(name, StageKey) else try_parse(name)
    if key is None:
        return f"the command that wrote stage '{name}'"
    return stage_for(key.kind).rerun_hint(key, Path(run_dir))


def lineage(run_dir: str | Path) -> StageKind:
    """The kind of stage that made ``run_dir``: the one its parent link names (a pruned run: prune), else
    fine-tuning."""
    from ..run.manifest import Manifest

    parent = Manifest.load(run_dir).parent
    return StageKind(parent["stage"]) if parent and parent.get("stage") in StageKind.values() else StageKind.FINETUNE


def resume(run_dir: str | Path, **options: Any) -> Any:
    """Continue an interrupted (or extend a finished) run with the stage that made it (its lineage):
    ``edgetl finetune --resume RUN`` for a fine-tuned run and for a pruned one alike."""
    return stage_for(lineage(run_dir)).resume(run_dir, **options)


__all__ = ["STAGES", "Stage", "all_stages", "lineage", "rerun_hint", "resume", "stage_for"]
