"""The QAT build stage (``TARGET:int8:qat``): ``edgetl export RUN --target T --qat``, or by itself when PTQ
misses the budget."""

from __future__ import annotations

from pathlib import Path

from ..run.keys import StageKey, StageKind
from .base import Stage


class QAT(Stage):
    kind = StageKind.QAT
    command = "export"
    summary = "Train the model under fake-quant for a target's INT8 (quantization-aware training), within a budget."
    config_path = "edgetl.build:TargetBuildConfig"
    entry_path = "edgetl.qat:qat_target"
    command_path = "-"  # `edgetl export --target T --qat` runs it

    def rerun_hint(self, key: StageKey, run_dir: Path) -> str:
        return f"edgetl {self.command} {run_dir} --target {key.target} --precision {key.precision} --qat"
