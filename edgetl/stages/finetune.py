"""The fine-tune stage: ``edgetl finetune DATA`` makes a run; ``--resume RUN`` continues it."""

from __future__ import annotations

from pathlib import Path

from ..run.keys import StageKey, StageKind
from .base import Stage


class Finetune(Stage):
    kind = StageKind.FINETUNE
    command = "finetune"
    summary = "Fine-tune a pretrained backbone on an image folder (a new run folder)."
    config_path = "edgetl.finetune:FinetuneConfig"
    entry_path = "edgetl.finetune:finetune"
    resume_path = "edgetl.finetune:resume"

    def rerun_hint(self, key: StageKey, run_dir: Path) -> str:
        return f"edgetl {self.command} DATA -o {run_dir} --overwrite"
