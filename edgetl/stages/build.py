"""The target build stage (``TARGET:PRECISION``): ``edgetl export RUN --target T --precision P``."""

from __future__ import annotations

from pathlib import Path

from ..run.keys import StageKey, StageKind
from .base import Stage


class Build(Stage):
    kind = StageKind.BUILD
    command = "export"
    summary = "Build the ONNX model for a target profile (OpenVINO IR, TensorRT Q/DQ ONNX), within a budget."
    config_path = "edgetl.build:TargetBuildConfig"
    entry_path = "edgetl.build:build_target"
    command_path = "-"  # `edgetl export --target` runs it

    def rerun_hint(self, key: StageKey, run_dir: Path) -> str:
        return f"edgetl {self.command} {run_dir} --target {key.target} --precision {key.precision}"
