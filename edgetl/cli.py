"""The ``edgetl`` command line: parse options, call the library, print the result.

Every command is a few lines over a documented function; an :class:`EdgetlError` becomes one
line on stderr and a non-zero exit (no traceback), anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .errors import EdgetlError


def handle_errors(func):
    """Turn EdgetlError into ``error: message`` and its exit code; Ctrl-C into exit 130."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgetlError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgetl")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """edgetl: image folder -> fine-tuned, compressed, benchmarked model for an edge device.

    \b
    Typical path:
      edgetl finetune DATA --model efficientnet_lite0 --output runs/demo
      edgetl export runs/demo                      # ONNX + parity check
      edgetl export runs/demo --target intel-cpu --precision int8
      edgetl bench runs/demo
    Try `edgetl demo` for the whole path on a built-in dataset.
    """
    from ._console import setup_logging

    setup_logging(verbose)


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("-m", "--model", default="efficientnet_lite0", show_default=True,
              help="Backbone: edgetl/torchvision/timm name (e.g. resnet50, timm:convnext_tiny).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Run folder [default: runs/DATA-MODEL].")
@click.option("--strategy", type=click.Choice(["linear-probe", "full", "gradual"]), default="full", show_default=True,
              help="linear-probe: frozen backbone; full: train everything; gradual: unfreeze from the top.")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs [default: 10; with --resume: extend to N].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, help="Head learning rate [default: 3e-3 linear-probe, 1e-3 otherwise].")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), help="Local weight file to start from (no download).")
@click.option("--no-pretrained", is_flag=True, help="Random initialisation instead of pretrained weights.")
@click.option("--val", type=click.Path(path_type=Path), help="Validation folder [default: DATA/val or a split].")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Held-out share when no val folder.")
@click.option("--image-size", type=click.IntRange(min=8), help="Override the backbone's input resolution.")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--patience", type=click.IntRange(min=0), default=5, show_default=True,
              help="Early stopping after N epochs without improvement (0: off).")
@click.option("--no-augment", is_flag=True, help="No random crops, flips or colour jitter.")
@click.option("--no-cache", is_flag=True, help="linear-probe: run the backbone every epoch instead of caching.")
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True, help="Data loader processes.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads [default: all cores].")
@click.option("--freeze-bn/--train-bn", default=None,
              help="Keep BatchNorm statistics fixed [default: fixed when starting from pretrained weights].")
@click.option("--save-every-epoch", is_flag=True, help="Keep a checkpoint file for every epoch.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in this folder with its recorded options, data order and RNG state; "
                   "--epochs extends it; only --epochs, --patience, --workers, --threads, --save-every-epoch "
                   "may change.")
@handle_errors
def finetune(data, model, output, strategy, epochs, batch_size, lr, optimizer, weights, no_pretrained, val,
             val_fraction, image_size, label_smoothing, patience, no_augment, no_cache, strict, seed, workers,
             threads, freeze_bn, save_every_epoch, overwrite, resume_dir) -> None:
    """Fine-tune a pretrained backbone on an image folder (DATA/CLASS/*.jpg or DATA/{train,val}/CLASS)."""
    from . import finetune as ft

    fields = dict(
        data=str(data) if data else None, model=model, weights=str(weights) if weights else None,
        pretrained=not no_pretrained, strategy=strategy, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, val=str(val) if val else None, val_fraction=val_fraction, image_size=image_size,
        label_smoothing=label_smoothing, patience=patience or None, augment=not no_augment,
        cache_features=not no_cache, strict=strict, seed=seed, workers=workers, threads=threads,
        freeze_bn=freeze_bn, save_every_epoch=save_every_epoch)
    if resume_dir is not None:
        if output is not None or overwrite:
            raise click.UsageError("--resume continues RUN in place: -o/--overwrite do not apply")
        result = ft.resume(resume_dir, changes=_given_options(fields))
    else:
        if data is None:
            raise click.UsageError("DATA is required (or --resume RUN)")
        config = ft.FinetuneConfig(output=str(output or ""),
                                   **{k: v for k, v in fields.items() if not (k == "epochs" and v is None)})
        result = ft.finetune(config, overwrite=overwrite)
    m = result.metrics
    top5 = f"top-5 {100 * m['top5']:.2f}%  " if m["top5"] is not None else ""
    click.echo(f"{result.run_dir}: val top-1 {100 * m['top1']:.2f}%  {top5}"
               f"best epoch {m['best_epoch']}/{m['epochs_run']}  {m['wall_time_s']:.0f} s")
    for name, acc in m["per_class"].items():
        click.echo(f"  {name:<24} {100 * acc:6.2f}%" if acc is not None else f"  {name:<24}   n/a")


# CLI parameter -> config field, where the names differ
_PARAM_FIELDS = {"no_pretrained": "pretrained", "no_augment": "augment", "no_cache": "cache_features"}


def _given_options(fields: dict) -> dict:
    """The config fields whose options were typed on the command line (not defaults)."""
    ctx = click.get_current_context()
    given = {}
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE:
            name = _PARAM_FIELDS.get(param.name, param.name)
            if name in fields:
                given[name] = fields[name]
    return given


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--static-batch", is_flag=True, help="Fix the batch dimension instead of leaving it dynamic.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Parity: absolute tolerance on logits.")
@click.option("--rtol", type=float, default=2e-4, show_default=True,
              help="Parity: tolerance relative to each image's largest |logit|.")
@click.option("--parity-images", type=click.IntRange(min=1), help="Check only this many val images.")
@click.option("--data", type=click.Path(path_type=Path), help="Labelled folder for the parity check.")
@click.option("--target", help="Also build for a device profile (e.g. intel-cpu) from the ONNX model.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Target precision [default: the target's default].")
@click.option("--calib-data", type=click.Path(path_type=Path),
              help="INT8 calibration images (CLASS/*.jpg, the run's classes) [default: the run's training split].")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True,
              help="Calibration images, sampled class-balanced.")
@click.option("--max-drop", type=click.FloatRange(0, 100),
              help="Allowed val top-1 drop vs the PyTorch float model, in points (INT8 then uses accuracy control).")
@click.option("--no-verify", is_flag=True,
              help="Use run files whose sha256 no longer matches the manifest (you edited them on purpose).")
@handle_errors
def export(run, opset, static_batch, no_simplify, exporter, atol, rtol, parity_images, data, target, precision,
           calib_data, calib_size, max_drop, no_verify) -> None:
    """Export a fine-tuned RUN to ONNX and check it against PyTorch on real images.

    With --target, also build the device artifact (e.g. OpenVINO IR in RUN/intel-cpu/int8/); the
    ONNX export runs first only if the run has none yet, or when its ONNX is stale (exported from an
    older checkpoint). Every run file used is checked against its recorded sha256 first.
    """
    from .export import ExportConfig, export_onnx
    from .run import Manifest, stale_reason

    if target is not None:  # an unknown target or precision fails before any work
        from .profiles import load_target

        load_target(target).check_precision(precision)
    manifest = Manifest.load(run)
    reuse = target is not None and manifest.completed("onnx")
    if reuse and (stale := stale_reason(manifest, "onnx")):
        click.echo(f"note: {run}/onnx/model.onnx is stale ({stale}): exporting it again", err=True)
        reuse = False
    if not reuse:
        config = ExportConfig(opset=opset, dynamic_batch=not static_batch, simplify=not no_simplify,
                              exporter=exporter, atol=atol, rtol=rtol, parity_images=parity_images,
                              data=str(data) if data else None)
        result = export_onnx(run, config, verify=not no_verify)
        m = result.metrics
        click.echo(f"{result.path}: max |ONNX - PyTorch| {m['max_abs_diff']:.2e}, top-1 agreement "
                   f"{100 * m['top1_agreement']:.1f}% on {m['parity_images']} images"
                   + (f" ({m['tie_flips']} numerical tie(s))" if m["tie_flips"] else ""))
    if target is not None:
        _build_target(run, target, precision, calib_data, calib_size, max_drop, data, not no_verify)


def _build_target(run, target, precision, calib_data, calib_size, max_drop, data, verify) -> None:
    from .build import TargetBuildConfig, build_target

    built = build_target(run, TargetBuildConfig(
        target=target, precision=precision, calib_data=str(calib_data) if calib_data else None,
        calib_size=calib_size, max_drop=max_drop, data=str(data) if data else None), verify=verify)
    m = built.metrics
    click.echo(f"{built.path}: top-1 {100 * m['top1']:.2f}% (float {100 * m['float_top1']:.2f}%, drop "
               f"{m['drop_points']:.2f} points), runs in {m['executed_precision']}, batch-1 p50 {m['latency_p50_ms']} ms")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def doctor(as_json: bool) -> None:
    """Which runtimes and devices this machine has, with versions."""
    import json

    from .doctor import environment_report, render_report

    report = environment_report()
    click.echo(json.dumps(report, indent=2) if as_json else render_report(report))


@cli.command()
@click.argument("pattern", required=False)
@handle_errors
def models(pattern: str | None) -> None:
    """List backbone names (optionally only those containing PATTERN)."""
    from .models import list_backbones

    for source, names in list_backbones().items():
        chosen = [n for n in names if not pattern or pattern.lower() in n.lower()]
        if chosen:
            click.echo(f"{source} ({len(chosen)}): " + ", ".join(chosen[:200]) + (" ..." if len(chosen) > 200 else ""))


@cli.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--data", type=click.Path(path_type=Path), help="Image folder to use instead of the built-in digits.")
@click.option("--quick", is_flag=True, help="Fewer epochs and a smaller input size (a smoke test).")
@handle_errors
def demo(output: Path, data: Path | None, quick: bool) -> None:
    """The whole pipeline on a built-in dataset (scikit-learn's digits as images): no download needed."""
    from .demo import run_demo

    run_demo(output, data=data, quick=quick)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Labelled folder with the run's classes [default: val split].")
@click.option("--batch", "batch", default="1", show_default=True, help="Batch sweep, e.g. 1,8,32.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True,
              help="Timed runs per artifact per batch per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Interleaved rounds (artifact order rotates); p50 is the lowest round median.")
@click.option("--round-time", type=click.FloatRange(min=0.01), default=3.0, show_default=True,
              help="Seconds per artifact per round before a round stops early.")
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads for every runtime.")
@click.option("--streams", type=click.IntRange(min=1), help="OpenVINO inference streams.")
@click.option("--performance-hint", type=click.Choice(["latency", "throughput"], case_sensitive=False),
              help="OpenVINO performance hint.")
@click.option("--no-true-fp32", is_flag=True, help="Do not add the INFERENCE_PRECISION_HINT=f32 run of FP32 IRs.")
@click.option("--runtime", "runtimes", multiple=True, help="Only this runtime (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate on at most N class-balanced images.")
@click.option("--no-accuracy", is_flag=True, help="Latency only.")
@click.option("--no-memory", is_flag=True, help="Skip the per-artifact peak-memory subprocess.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Report folder [default: RUN/bench].")
@click.option("--compare", type=click.Path(path_type=Path), help="Earlier report.json to compare latencies with.")
@click.option("--fail-on-regression", type=click.FloatRange(min=0), metavar="PCT",
              help="With --compare: exit 3 when any p50 got slower by more than PCT percent.")
@click.option("--no-verify", is_flag=True,
              help="Measure artifacts whose sha256 no longer matches the manifest (edited on purpose).")
@handle_errors
def bench(inputs, data, batch, warmup, iterations, rounds, round_time, threads, streams, performance_hint,
          no_true_fp32, runtimes, limit, no_accuracy, no_memory, output, compare, fail_on_regression,
          no_verify) -> None:
    """Latency and accuracy drop of every artifact of a RUN (or of artifact files), side by side."""
    from rich.console import Console

    from .bench import BenchConfig, benchmark, parse_batch_sizes, render_comparison, render_table
    from .errors import EdgetlError, RegressionError

    config = BenchConfig(
        batch_sizes=parse_batch_sizes(batch), warmup=warmup, iterations=iterations, rounds=rounds,
        round_time_s=round_time, threads=threads, streams=streams, performance_hint=performance_hint,
        true_fp32=not no_true_fp32, runtimes=tuple(runtimes) or None, limit=limit, accuracy=not no_accuracy,
        memory=not no_memory, data=str(data) if data else None, output=str(output) if output else None,
        compare=str(compare) if compare else None, fail_on_regression=fail_on_regression, verify=not no_verify)
    target = inputs[0] if len(inputs) == 1 else list(inputs)
    console = Console(width=None if sys.stdout.isatty() else 220)  # results on stdout, never wrapped in pipes
    try:
        report = benchmark(target, config, progress=sys.stderr.isatty())
    except RegressionError as exc:  # the reports are written; show them before exiting 3
        console.print(render_table(exc.report.data))
        console.print(render_comparison(exc.report.data["comparison"]))
        raise
    console.print(render_table(report.data))
    for note in report.data["notes"]:
        console.print(f"  note: {note}", highlight=False)
    if report.data.get("comparison"):
        console.print(render_comparison(report.data["comparison"]))
    click.echo(f"reports: {', '.join(str(p) for p in report.files.values())}")
    if report.failed:
        raise EdgetlError(f"{len(report.failed)} artifact(s) failed: "
                          + "; ".join(f"{r['key']}: {r['reason']}" for r in report.failed))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def status(run: Path, as_json: bool) -> None:
    """What a RUN holds: each stage, and whether its files are current, stale, modified or missing.

    Exits 0 when every stage is current, 4 when something needs re-running.
    """
    import json

    from .run import run_status

    states = run_status(run)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in states], indent=2))
    else:
        width = max([len(s.stage) for s in states] + [5])
        click.echo(f"{'stage':<{width}}  {'recorded':<13}  {'state':<9}  detail")
        for s in states:
            click.echo(f"{s.stage:<{width}}  {s.status:<13}  {s.state:<9}  {s.detail}")
    if any(s.state != "current" for s in states):
        sys.exit(4)


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
