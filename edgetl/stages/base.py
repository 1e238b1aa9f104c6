"""The ``Stage`` protocol: what a stage is to the rest of edgetl (its command, config, entry point, hint, resume).

A stage module is light to import (no ML framework): its config class and entry point are named as
``module:attribute`` strings and imported on first use, as the runtime table does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .._lazy import load_attr
from ..errors import RunFolderError
from ..run.keys import StageKey, StageKind


class Stage:
    """One step of the pipeline: a command, a typed config, a library entry point and what it records."""

    kind: ClassVar[StageKind]
    command: ClassVar[str]
    """The CLI command that runs it (``edgetl COMMAND``)."""
    summary: ClassVar[str]
    config_path: ClassVar[str | None] = None
    """``module:Class`` of its typed config."""
    entry_path: ClassVar[str]
    """``module:function`` of its library entry point (the Python API)."""
    resume_path: ClassVar[str | None] = None
    """``module:function`` that continues an interrupted run this stage made, when it has one."""
    command_path: ClassVar[str | None] = None
    """``module:attribute`` of its click command [default: ``edgetl.cli.<command>:<command>``]."""

    @property
    def config(self) -> type | None:
        return load_attr(self.config_path) if self.config_path else None

    @property
    def run(self) -> Callable[..., Any]:
        """The library entry point (``edgetl.<name>(...)``)."""
        return load_attr(self.entry_path)

    @property
    def click_command(self) -> Any:
        """Its click command (None for a stage another command runs: a build is ``export --target``)."""
        path = self.command_path or f"edgetl.cli.{self.command}:{self.command}"
        return load_attr(path) if path != "-" else None

    def resume(self, run_dir: str | Path, **options: Any) -> Any:
        if not self.resume_path:
            raise RunFolderError(f"a {self.kind} stage cannot be resumed: run `edgetl {self.command}` again")
        return load_attr(self.resume_path)(run_dir, **options)


    def rerun_hint(self, key: StageKey, run_dir: Path) -> str:
        """The command line that (re)produces the stage ``key`` of ``run_dir``."""
        return f"edgetl {self.command} {run_dir}"
