"""The prune stage: ``edgetl prune RUN`` makes a pruned child run, recovered by distillation."""

from __future__ import annotations

from pathlib import Path

from ..run.keys import StageKey, StageKind
from .base import Stage


class Prune(Stage):
    kind = StageKind.PRUNE
    command = "prune"
    summary = "Structured pruning of a fine-tuned run into a new, smaller run, recovered by distillation."
    config_path = "edgetl.prune:PruneConfig"
    entry_path = "edgetl.prune:prune"
    resume_path = "edgetl.prune:resume"

    def rerun_hint(self, key: StageKey, run_dir: Path) -> str:
        return f"edgetl {self.command} PARENT -o {run_dir} --overwrite"
