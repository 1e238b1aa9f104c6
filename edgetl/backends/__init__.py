"""Runtime backends: one module per runtime, each exposing a :class:`~edgetl.backends.base.Runner`.

The runtimes are listed once, in :data:`RUNTIMES` (``_registry.py``). Modules are imported only
when their runtime is used, so ``import edgetl`` and the CLI start without OpenVINO or TensorRT
installed. Adding a runtime is one module here plus one row in the table.
"""

from __future__ import annotations

from ._registry import (RUNTIMES, RuntimeSpec, create_runner, extension_runtimes, runner_class,
                        runtime_for_suffix, runtime_spec)
from .base import Runner, RunnerInfo

RUNNERS = {name: spec.runner for name, spec in RUNTIMES.items()}
"""runtime name -> ``module:RunnerClass`` (a view of :data:`RUNTIMES`)."""

__all__ = ["RUNNERS", "RUNTIMES", "Runner", "RunnerInfo", "RuntimeSpec", "create_runner",
           "extension_runtimes", "runner_class", "runtime_for_suffix", "runtime_spec"]
