"""The engine stage (``TARGET:PRECISION:engine``): ``edgetl compile RUN`` builds the TensorRT engine on the
device from a target build's Q/DQ ONNX (the mechanics live in :mod:`edgetl.toolchains.tensorrt_engine`)."""

from __future__ import annotations

from pathlib import Path

from ..run.keys import StageKey, StageKind
from .base import Stage


class Compile(Stage):
    kind = StageKind.ENGINE
    command = "compile"
    summary = "Compile a TensorRT engine from a TensorRT target build, on the device that will run it."
    config_path = "edgetl.toolchains.tensorrt_engine:CompileConfig"
    entry_path = "edgetl.toolchains.tensorrt_engine:compile_engine"
    command_path = "edgetl.cli.compile:compile_command"

    def rerun_hint(self, key: StageKey, run_dir: Path) -> str:
        return f"edgetl {self.command} {run_dir} --target {key.target} --precision {key.precision} (on the device)"
