"""Commands that read, never write: ``status``, ``doctor``, ``models``, ``targets``; and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import handle_errors, run_or_latest
from .args import json_option, output_field, run_argument


@click.command("status")
@run_argument()
@json_option()
@handle_errors
def status(run: Path | None, as_json: bool) -> None:
    """What a RUN holds: each stage, and whether its files are current, stale, modified, missing or unsafe
    (a symlink leaving the run folder: replace it with the file itself).

    RUN defaults to the most recent run under ./runs. Exits 0 when every stage is current, 4 when
    something needs re-running or replacing, or a build missed its accuracy budget (budget-missed).
    """
    import json

    from ..run import run_status
    from ..run.keys import RunState

    states = run_status(run_or_latest(run))
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in states], indent=2))
    else:
        width = max([len(s.stage) for s in states] + [5])
        click.echo(f"{'stage':<{width}}  {'recorded':<13}  {'state':<9}  detail")
        for s in states:
            click.echo(f"{s.stage:<{width}}  {s.status:<13}  {s.state:<9}  {s.detail}")
    if any(s.state != RunState.CURRENT for s in states):
        sys.exit(4)


@click.command("doctor")
@json_option()
@handle_errors
def doctor(as_json: bool) -> None:
    """Which runtimes and devices this machine has, with versions."""
    import json

    from ..doctor import environment_report, render_report

    report = environment_report()
    click.echo(json.dumps(report, indent=2) if as_json else render_report(report))


@click.command("models")
@click.argument("pattern", required=False)
@json_option()
@handle_errors
def models(pattern: str | None, as_json: bool) -> None:
    """List backbone names (optionally only those containing PATTERN)."""
    import json

    from ..models import list_backbones

    chosen = {source: [n for n in names if not pattern or pattern.lower() in n.lower()]
              for source, names in list_backbones().items()}
    if as_json:
        click.echo(json.dumps(chosen, indent=2))
        return
    for source, names in chosen.items():
        if names:
            click.echo(f"{source} ({len(names)}): " + ", ".join(names[:200]) + (" ..." if len(names) > 200 else ""))


@click.command("targets")
@json_option()
@handle_errors
def targets(as_json: bool) -> None:
    """The device profiles `edgetl export --target` builds for, one line each."""
    import dataclasses
    import json

    from ..profiles import all_targets

    profiles = all_targets()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(p) for p in profiles], indent=2))
        return
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        precisions = "/".join(p.precisions)
        click.echo(f"{p.name:<{width}}  {p.toolchain:<8}  {precisions:<14}  {p.description}")


def _demo_options(command):
    from ..config import Opt, options_from
    from ..demo import DemoConfig

    return options_from(DemoConfig, custom={"output": output_field(),
                                            "data": Opt(type=click.Path(path_type=Path))})(command)


@click.command("demo")
@handle_errors
@_demo_options
def demo(values, given) -> None:
    """The whole pipeline on a built-in dataset (scikit-learn's digits as images): no download needed."""
    from ..config import build
    from ..demo import DemoConfig, run_demo

    config = build(DemoConfig, values)
    run_demo(config.output, data=config.data, quick=config.quick)
