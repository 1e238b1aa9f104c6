"""The tune stage: ``edgetl tune DATA`` searches fine-tuning options; each trial is a fine-tuned child run."""

from __future__ import annotations

from ..run.keys import StageKind
from .base import Stage


class Tune(Stage):
    kind = StageKind.TUNE
    command = "tune"
    summary = "Search fine-tuning hyper-parameters with Optuna; every trial is a run folder."
    config_path = "edgetl.tune.config:TuneConfig"
    entry_path = "edgetl.tune.study:tune"
    resume_path = "edgetl.finetune:resume"
    """A trial is a fine-tuned run: it resumes as one."""
    command_path = "edgetl.cli.prune:tune"
