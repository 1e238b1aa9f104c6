"""``edgetl prune``: a smaller child run from a run; ``edgetl tune``: a search of fine-tuning options."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import Command, handle_errors, run_or_latest
from .args import output_field, overwrite_option, precision_field, threads_field, verify_option


def _prune_options(command):
    from ..config import Opt, options_from
    from ..prune import IMPORTANCES, PruneConfig

    return options_from(PruneConfig, custom={
        "ratio": Opt(type=click.FloatRange(0, 1, min_open=True, max_open=True)),
        "importance": Opt(type=click.Choice(IMPORTANCES)),
        "layer_ratio": Opt(multiple=True, help="Another --ratio for some modules: NAME=RATIO, a module name or "
                           "pattern (a block's name covers its layers; later ones win), e.g. conv_head=0.3 or "
                           "'blocks.5.*=0.5' (repeatable; with --ratio only)."),
        "keep": Opt(multiple=True, help="Module name kept whole, besides the classifier (repeatable)."),
        "feature_layers": Opt(multiple=True, help="With --feature-weight, also match this module's output to the "
                              "parent's (a name or pattern; repeatable)."),
        "output": output_field("The new run folder [default: PARENT-pruned beside the parent]."),
        "target": Opt(("--latency-target",), help="Device profile that --max-latency is measured on "
                      "(see `edgetl targets`)."),
        "target_latency": Opt(("--max-latency",), help="Prune until batch-1 latency on --latency-target is at "
                              "most this, e.g. 0.6ms (measured on this machine)."),
        "round_to": Opt(type=click.IntRange(min=1)),
        "patience": Opt(type=click.IntRange(min=0), to_field=lambda v: v or None),
    })(command)


@click.command("prune", cls=Command, renamed={"--target": "--latency-target", "--target-latency": "--max-latency"})
@click.argument("run", type=click.Path(path_type=Path), required=False)
@overwrite_option("an existing pruned run folder at --output")
@verify_option("Prune from")
@handle_errors
@_prune_options
def prune(run, overwrite, no_verify, values, given) -> None:
    """Remove whole channels from RUN's model, then recover it by distillation: a new run whose parent is RUN.

    RUN defaults to the latest run under ./runs. The pruned run is an ordinary run: export it, build
    it for any target, and bench it beside its parent (edgetl bench PARENT CHILD).
    """
    from ..config import build
    from ..prune import PruneConfig
    from ..prune import prune as prune_run

    config = build(PruneConfig, values)  # a bad option is reported before a run is looked for
    result = prune_run(run_or_latest(run), config, overwrite=overwrite, verify=not no_verify)
    m = result.metrics
    click.echo(f"{result.run_dir}: {100 * m['macs_reduction']:.1f}% fewer MACs ({m['macs_before'] / 1e9:.3f}G -> "
               f"{m['macs_after'] / 1e9:.3f}G), params {m['params_before'] / 1e6:.2f}M -> {m['params_after'] / 1e6:.2f}M, "
               f"val top-1 {100 * m['top1_parent']:.2f}% -> {100 * m['top1_pruned']:.2f}% pruned -> "
               f"{100 * m['top1_repaired']:.2f}% after {m['repair']['method']} -> "
               f"{100 * m['top1_recovered']:.2f}% recovered (parent {result.parent})")


def _tune_options(command):
    from ..config import Opt, options_from
    from ..tune.config import OBJECTIVES, PRUNERS, SAMPLERS, TuneConfig

    return options_from(TuneConfig, skip=("data",), custom={
        "trials": Opt(type=click.IntRange(min=1)),
        "timeout": Opt(type=click.FloatRange(min=0, min_open=True)),
        "space": Opt(type=click.Path(path_type=Path, dir_okay=False)),
        "output": output_field("Study folder [default: runs/DATA-tune]."),
        "sampler": Opt(type=click.Choice(SAMPLERS)),
        "pruner": Opt(type=click.Choice(PRUNERS)),
        "objective": Opt(type=click.Choice(OBJECTIVES)),
        "latency_precision": precision_field("Precision of the --latency-target build [default: the target's]."),
        "workers": Opt(("--jobs",), type=click.IntRange(min=1), help="Trials run at once, each in its own process."),
        "threads": threads_field(),
    })(command)


@click.command("tune", cls=Command, renamed={"--workers": "--jobs"})
@click.argument("data", type=click.Path(path_type=Path), required=False)
@handle_errors
@_tune_options
def tune(data, values, given) -> None:
    """Search fine-tuning options on DATA with Optuna; each trial is a run under STUDY_DIR/trials/.

    Rerunning the same command resumes the study (finished trials count toward --trials). Writes
    best.yaml (edgetl finetune --config best.yaml), report.html and trials.json; browse the storage
    with optuna-dashboard (see docs/tune.md). Needs pip install 'edgetl[tune]'.
    """
    from ..config import build
    from ..tune.config import TuneConfig
    from ..tune.report import format_table
    from ..tune.study import tune as run_tune

    data = data or values.get("data")
    if data is None:
        raise click.UsageError("DATA is required (or data: in --config)")
    result = run_tune(build(TuneConfig, values, data=str(data)))
    click.echo(format_table(result.trials, multi=values.get("objective") == "top1+latency"))
    for message in result.warnings:
        click.echo(f"warning: {message}", err=True)
    if result.best is not None:
        click.echo(f"best: trial {result.best['number']} val top-1 {100 * result.best['values'][0]:.2f}%  "
                   f"-> {result.best_config}")
    click.echo(f"report: {result.report}  storage: {result.storage}")
