"""``edgetl bench``: latency, accuracy and memory of every artifact of one or more runs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import Command, handle_errors, run_or_latest
from .args import output_field, overwrite_option, threads_field


def _bench_options(command):
    from ..bench import BenchConfig, parse_batch_sizes
    from ..config import Opt, options_from

    return options_from(BenchConfig, custom={
        "batch_sizes": Opt(("--batch-size",), type=str, default="1", to_field=lambda v: parse_batch_sizes(str(v)),
                           help="Batch size, or a sweep, e.g. 1,8,32 (each at most the number of evaluation images)."),
        "warmup": Opt(type=click.IntRange(min=0)),
        "iterations": Opt(type=click.IntRange(min=1)),
        "rounds": Opt(type=click.IntRange(min=1)),
        "round_time_s": Opt(("--round-time",), type=click.FloatRange(min=0.01)),
        "threads": threads_field(),
        "streams": Opt(type=click.IntRange(min=1)),
        "performance_hint": Opt(type=click.Choice(["latency", "throughput", "cumulative_throughput"],
                                                  case_sensitive=False)),
        "runtimes": Opt(("--runtime",), multiple=True, help="Only this runtime (repeatable)."),
        "limit": Opt(type=click.IntRange(min=1)),
        "data": Opt(type=click.Path(path_type=Path)),
        "output": output_field("Report folder [default: RUN/bench]: a new or empty folder, or reports edgetl "
                               "wrote (replaced with --overwrite)."),
        "compare": Opt(type=click.Path(path_type=Path)),
        "fail_on_regression": Opt(type=click.FloatRange(min=0)),
        "verify": Opt(help="Measure artifacts whose sha256 no longer matches the manifest (edited on purpose)."),
    })(command)


@click.command("bench", cls=Command, renamed={"--batch": "--batch-size"})
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@overwrite_option("the edgetl bench reports at -o (only edgetl's reports)")
@handle_errors
@_bench_options
def bench(inputs, overwrite, values, given) -> None:
    """Latency and accuracy drop of every artifact of one or more RUNs (or of artifact files), side by side.

    Several runs (a model and its pruned child) share one table and plot; keys and labels name the run.
    With no input, the most recent run under ./runs. -o must be a new or empty folder, or reports edgetl
    wrote (replaced with --overwrite).
    """
    from rich.console import Console

    from ..bench import BenchConfig, benchmark, render_comparison, render_table
    from ..config import build
    from ..errors import EdgetlError, RegressionError

    inputs = inputs or (run_or_latest(None),)
    config = build(BenchConfig, values)
    target = inputs[0] if len(inputs) == 1 else list(inputs)
    console = Console(width=None if sys.stdout.isatty() else 220)  # results on stdout, never wrapped in pipes
    try:
        report = benchmark(target, config, progress=sys.stderr.isatty(), overwrite=overwrite)
    except RegressionError as exc:  # the reports are written; show them before exiting 3
        console.print(render_table(exc.report.data))
        console.print(render_comparison(exc.report.data["comparison"]))
        raise
    console.print(render_table(report.data))
    for note in report.data["notes"]:
        console.print(f"  note: {note}", highlight=False, markup=False, soft_wrap=True)  # [budget-missed] is text
    if report.data.get("comparison"):
        console.print(render_comparison(report.data["comparison"]))
    click.echo(f"reports: {', '.join(str(p) for p in report.files.values())}")
    if report.failed:
        raise EdgetlError(f"{len(report.failed)} artifact(s) failed: "
                          + "; ".join(f"{r['key']}: {r['reason']}" for r in report.failed))
