"""The benchmark harness: every artifact of one or more runs, side by side, on the same images.

``benchmark(run_or_artifacts, BenchConfig())`` finds the artifacts (from the run manifest, or loose
files whose runtime follows from the extension), and for each one measures:

* load/compile time, artifact size on disk, the precision that actually executed;
* latency over a batch sweep: warm-up, then ``rounds`` rounds that *interleave* the artifacts
  (the order rotates each round), ``iterations`` timed runs per artifact per round. Statistics
  (mean, std, p50/p90/p95/p99) pool every timed run; ``p50_stable_ms`` is the lowest per-round
  median. On a shared machine other processes only ever *add* time, so the least-disturbed round is
  the best estimate of an artifact's own cost, and interleaving spreads a noisy period over every
  artifact instead of penalising whichever ran during it. Comparisons (``--compare``) use it;
* peak memory in a fresh subprocess per artifact (peak RSS, ``VmHWM``; in one process the
  high-water mark would belong to whichever artifact peaked first), reported as the process peak
  and as the delta over the runtime library's own import;
* accuracy on a labelled folder (top-1/top-5/per-class) and, against the float reference (PyTorch
  eager FP32), the top-1 drop in points with a paired bootstrap 95% interval and an exact McNemar
  test on the discordant images, top-1 agreement and max/mean |logit difference|.

A batch size larger than the evaluation set is an error (:class:`ConfigError`): latency batches are
real evaluation images, never repeated ones. An artifact whose runtime is missing is *skipped*
with the reason; one that fails to load or run (an edgetl error or the runtime's) is *failed* with
the reason; neither stops the rest. A bug in edgetl's own code is neither: it keeps its traceback
(:func:`~edgetl.bench.measure.is_edgetl_bug`).

The report schema is documented in ``docs/bench.md``; ``SCHEMA_VERSION`` changes when a field
changes meaning or goes away (adding fields does not).

The package: ``config`` (:class:`BenchConfig`), ``discover`` (which artifacts, :class:`BenchTarget`),
``measure`` (loading, the latency rounds), ``accuracy`` (the top-1 pass, the drop and its interval),
``memory`` (the subprocess probe, ``python -m edgetl.bench.memory``), ``compare`` (``--compare``),
``report`` (terminal table, Markdown, HTML, plot) and ``harness`` (:func:`benchmark`). Names are
imported from their module on first use, so the CLI and the memory probe import only what they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "config": ("SCHEMA_VERSION", "STAGE", "BenchConfig", "parse_batch_sizes"),
    "discover": ("EXTENSION_RUNTIMES", "RUNTIME_TITLES", "BenchTarget", "check_targets", "discover_artifacts",
                 "expand_variants", "find_run_dir", "runtime_for_path"),
    "measure": ("RUNTIME_MODULES", "is_edgetl_bug", "latency_stats"),
    "accuracy": ("accuracy_drop", "mcnemar_exact_p"),
    "memory": ("MEMORY_METHOD",),
    "compare": ("compare_reports", "load_report"),
    "report": ("COLUMNS", "SUMMARY_COLUMNS", "plot_accuracy_latency", "render_comparison", "render_html",
               "render_markdown", "render_table", "write_reports"),
    "harness": ("BenchReport", "benchmark"),
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from .accuracy import accuracy_drop, mcnemar_exact_p
    from .compare import compare_reports, load_report
    from .config import SCHEMA_VERSION, STAGE, BenchConfig, parse_batch_sizes
    from .discover import (EXTENSION_RUNTIMES, RUNTIME_TITLES, BenchTarget, check_targets, discover_artifacts,
                           expand_variants, find_run_dir, runtime_for_path)
    from .harness import BenchReport, benchmark
    from .measure import RUNTIME_MODULES, is_edgetl_bug, latency_stats
    from .memory import MEMORY_METHOD
    from .report import (COLUMNS, SUMMARY_COLUMNS, plot_accuracy_latency, render_comparison, render_html,
                         render_markdown, render_table, write_reports)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["COLUMNS", "EXTENSION_RUNTIMES", "MEMORY_METHOD", "RUNTIME_MODULES", "RUNTIME_TITLES", "SCHEMA_VERSION",
           "STAGE", "SUMMARY_COLUMNS", "BenchConfig", "BenchReport", "BenchTarget", "accuracy_drop", "benchmark",
           "check_targets", "compare_reports", "discover_artifacts", "expand_variants", "find_run_dir", "is_edgetl_bug",
           "latency_stats", "load_report", "mcnemar_exact_p", "parse_batch_sizes", "plot_accuracy_latency",
           "render_comparison", "render_html", "render_markdown", "render_table", "runtime_for_path", "write_reports"]
