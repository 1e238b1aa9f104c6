"""The package stage: ``edgetl package RUN`` writes a deployable bundle of one target build."""

from __future__ import annotations

from ..run.keys import StageKind
from .base import Stage


class Package(Stage):
    kind = StageKind.PACKAGE
    command = "package"
    summary = "Bundle a target build with labels, preprocessing and C++/Python samples for an app."
    config_path = "edgetl.package:PackageConfig"
    entry_path = "edgetl.package:package"
    command_path = "edgetl.cli.package:package_command"
