"""The ONNX export stage: ``edgetl export RUN`` (with ``--target``: also the target build)."""

from __future__ import annotations

from ..run.keys import StageKind
from .base import Stage


class Export(Stage):
    kind = StageKind.ONNX
    command = "export"
    summary = "Export a run to ONNX (checked against PyTorch), and build it for a target with --target."
    config_path = "edgetl.export:ExportConfig"
    entry_path = "edgetl.export:export_onnx"
