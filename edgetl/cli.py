"""The ``edgetl`` command line: parse options, call the library, print the result.

Every command is a few lines over a documented function; an :class:`EdgetlError` becomes one
line on stderr and a non-zero exit (no traceback), anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import functools
import os
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


def _finetune_options(command):
    from .config import Opt, options_from
    from .finetune import FinetuneConfig

    return options_from(FinetuneConfig, skip=("data",), custom={
        "output": Opt(("-o", "--output"), type=click.Path(path_type=Path),
                      help="Run folder [default: runs/DATA-MODEL, beside the dataset when run from inside it]."),
        "model": Opt(("-m", "--model")),
        "pretrained": Opt(help="Random initialisation instead of pretrained weights."),
        "augment": Opt(help="No random crops, flips or colour jitter on training images."),
        "epochs": Opt(type=click.IntRange(min=1), help="Training epochs (with --resume: extend the run to N)."),
        "batch_size": Opt(type=click.IntRange(min=1)),
        "weights": Opt(type=click.Path(path_type=Path)),
        "val": Opt(type=click.Path(path_type=Path)),
        "image_size": Opt(type=click.IntRange(min=8)),
        "patience": Opt(type=click.IntRange(min=0), to_field=lambda v: v or None,
                        help="Early stopping after N epochs without a better val top-1 (or the same at a lower "
                             "val loss; 0: off)."),
        "cache_features": Opt(("--no-cache", "--no-cache-features"),
                              help="linear-probe: run the backbone every epoch instead of caching features."),
        "workers": Opt(type=click.IntRange(min=0), help="Data loader processes."),
        "threads": Opt(type=click.IntRange(min=1), help="Torch CPU threads [default: all cores]."),
        "freeze_bn": Opt(("--freeze-bn/--train-bn",)),
        "nproc": Opt(type=click.IntRange(min=1), help="Training processes on this machine (DistributedDataParallel, "
                                                      "torch's elastic launcher; --batch-size is the global batch, "
                                                      "split over them). Several machines: torchrun -m edgetl "
                                                      "finetune, see docs/distributed.md."),
        "sync_bn": Opt(("--sync-bn",), help="Several processes: synchronised BatchNorm (GPUs only)."),
    })(command)


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder (only a run folder, and only once "
                                               "the new run has finished its first epoch).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in this folder with its recorded options, data order and RNG state; "
                   "--epochs extends it; only --epochs, --patience, --workers, --threads, --save-every-epoch "
                   "may change.")
@handle_errors
@_finetune_options
def finetune(data, overwrite, resume_dir, values, given) -> None:
    """Fine-tune a pretrained backbone on an image folder (DATA/CLASS/*.jpg or DATA/{train,val}/CLASS).

    Every option can also come from --config FILE.yaml (e.g. the best configuration a search wrote);
    options typed here override the file. The resolved configuration is saved in the run's manifest.
    """
    from . import finetune as ft
    from .config import build

    if resume_dir is not None:
        if "output" in given or overwrite:
            raise click.UsageError("--resume continues RUN in place: -o/--overwrite do not apply")
        changes = {k: values[k] for k in given if k in values}
        if data is not None:
            changes["data"] = str(data)
        result = ft.resume(resume_dir, changes=changes)
    else:
        data = data or values.get("data")
        if data is None:
            raise click.UsageError("DATA is required (or --resume RUN, or data: in --config)")
        result = ft.finetune(build(ft.FinetuneConfig, values, data=str(data)), overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker other than rank 0: rank 0 reports
        return
    m = result.metrics
    top5 = f"top-5 {100 * m['top5']:.2f}%  " if m["top5"] is not None else ""
    click.echo(f"{result.run_dir}: val top-1 {100 * m['top1']:.2f}%  {top5}"
               f"best epoch {m['best_epoch']}/{m['epochs_run']}  training {m['wall_time_s']:.0f} s, "
               f"command {_command_wall_s():.0f} s")
    for name, acc in m["per_class"].items():
        click.echo(f"  {name:<24} {100 * acc:6.2f}%" if acc is not None else f"  {name:<24}   n/a")


def _export_options(command):
    from .build import TargetBuildConfig
    from .config import Opt, options_from
    from .export import ExportConfig
    from .profiles import PRECISIONS
    from .toolchains.trt_settings import CALIBRATION_METHODS, HARDWARE_COMPATIBILITY

    return options_from(ExportConfig, TargetBuildConfig, skip=("target",), custom={
        "dynamic_batch": Opt(("--static-batch",), help="Fix the batch dimension instead of leaving it dynamic."),
        "simplify": Opt(help="Skip onnxslim."),
        "parity_images": Opt(type=click.IntRange(min=0), to_field=lambda v: v or None,
                             help="Check this many val images, sampled class-balanced (0: all of them)."),
        "data": Opt(type=click.Path(path_type=Path), help="Labelled folder (the run's classes) for the parity "
                                                          "check and target evaluation [default: the run's val split]."),
        "precision": Opt(type=click.Choice(PRECISIONS), help="Target precision [default: the target's default]."),
        "calib_data": Opt(type=click.Path(path_type=Path)),
        "calib_size": Opt(type=click.IntRange(min=1)),
        "max_drop": Opt(type=click.FloatRange(0, 100)),
        "seed": Opt(help="Seed for calibration sampling."),
        "calibration": Opt(type=click.Choice(CALIBRATION_METHODS)),
        "dla_core": Opt(type=click.IntRange(min=0)),
        "max_batch": Opt(type=click.IntRange(min=1)),
        "hardware_compatibility": Opt(type=click.Choice(HARDWARE_COMPATIBILITY)),
    })(command)


def _run_or_latest(run: Path | None) -> Path:
    """RUN as given, or the most recently modified run under ./runs (said on stderr)."""
    if run is not None:
        return run
    from .run import latest_run

    run = latest_run()
    click.echo(f"note: no RUN given: using {run}, the most recent run under ./runs", err=True)
    return run


@cli.command()
@click.argument("run", type=click.Path(path_type=Path), required=False)
@click.option("--target", help="Also build for a device profile (e.g. intel-cpu, jetson; see `edgetl targets`).")
@click.option("--no-verify", is_flag=True,
              help="Use run files whose sha256 no longer matches the manifest (you edited them on purpose).")
@handle_errors
@_export_options
def export(run, target, no_verify, values, given) -> None:
    """Export a fine-tuned RUN to ONNX and check it against PyTorch on real images.

    RUN defaults to the most recently modified run under ./runs. With --target, also build the device
    artifact (OpenVINO IR in RUN/intel-cpu/int8/; for jetson and nvidia-gpu the Q/DQ or FP16 ONNX that
    TensorRT builds its engine from, with the trtexec lines in build.json); the
    ONNX export runs first when the run has none yet, when it is stale (exported from an older
    checkpoint), or when ONNX options given here differ from those it was exported with. Every run
    file used is checked against its recorded sha256 first.
    """
    from .build import TargetBuildConfig, build_target
    from .config import build
    from .export import ExportConfig, export_onnx

    run = _run_or_latest(run)
    target = target or values.get("target")
    export_config = build(ExportConfig, values)
    build_config = build(TargetBuildConfig, values, target=target or "intel-cpu")
    if target is not None:  # an unknown target, precision or option fails before any work
        from .build import check_build_config

        check_build_config(build_config)
    if target is None or _needs_export(run, export_config, given):
        result = export_onnx(run, export_config, verify=not no_verify)
        m = result.metrics
        click.echo(f"{result.path}: max |ONNX - PyTorch| {m['max_abs_diff']:.2e}, top-1 agreement "
                   f"{100 * m['top1_agreement']:.1f}% on {m['parity_images']} images"
                   + (f" ({m['tie_flips']} numerical tie(s))" if m["tie_flips"] else ""))
    if target is not None:
        built = build_target(run, build_config, verify=not no_verify)
        m = built.metrics
        click.echo(f"{built.path}: top-1 {100 * m['top1']:.2f}% (float {100 * m['float_top1']:.2f}%, drop "
                   f"{m['drop_points']:.2f} points), runs in {m['executed_precision']}, "
                   f"batch-1 p50 {m['latency_p50_ms']} ms")
        control = m.get("accuracy_control")
        if control and control.get("reverted_to_float"):
            names = m.get("float_modules") or control["reverted_to_float"]
            click.echo(f"  left in float to meet --max-drop: {', '.join(names)}")


def _needs_export(run: Path, config, given: set[str]) -> bool:
    """Whether ``export --target`` must (re-)export the ONNX first, saying why on stderr."""
    import dataclasses

    from .run import Manifest, stale_reason

    manifest = Manifest.load(run)
    if not manifest.completed("onnx"):
        return True
    if stale := stale_reason(manifest, "onnx"):
        click.echo(f"note: {run}/onnx/model.onnx is stale ({stale}): exporting it again", err=True)
        return True
    recorded = manifest.stage("onnx")["options"]
    changed = sorted(k for k, v in dataclasses.asdict(config).items()
                     if k in given and k not in ("data",) and recorded.get(k) != v)
    if changed:
        click.echo(f"note: exporting the ONNX again: {', '.join(changed)} differ from the existing export", err=True)
        return True
    click.echo(f"note: reusing {run}/onnx/model.onnx (exported with opset {recorded.get('opset')}, "
               f"{recorded.get('exporter')} exporter)", err=True)
    return False


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


def _demo_options(command):
    from .config import Opt, options_from
    from .demo import DemoConfig

    return options_from(DemoConfig, custom={"output": Opt(("-o", "--output"), type=click.Path(path_type=Path)),
                                            "data": Opt(type=click.Path(path_type=Path))})(command)


@cli.command()
@handle_errors
@_demo_options
def demo(values, given) -> None:
    """The whole pipeline on a built-in dataset (scikit-learn's digits as images): no download needed."""
    from .config import build
    from .demo import DemoConfig, run_demo

    config = build(DemoConfig, values)
    run_demo(config.output, data=config.data, quick=config.quick)


def _bench_options(command):
    from .bench import BenchConfig, parse_batch_sizes
    from .config import Opt, options_from

    return options_from(BenchConfig, custom={
        "batch_sizes": Opt(("--batch",), type=str, default="1", to_field=lambda v: parse_batch_sizes(str(v)),
                           help="Batch sweep, e.g. 1,8,32 (each at most the number of evaluation images)."),
        "warmup": Opt(type=click.IntRange(min=0)),
        "iterations": Opt(type=click.IntRange(min=1)),
        "rounds": Opt(type=click.IntRange(min=1)),
        "round_time_s": Opt(("--round-time",), type=click.FloatRange(min=0.01)),
        "threads": Opt(type=click.IntRange(min=1)),
        "streams": Opt(type=click.IntRange(min=1)),
        "performance_hint": Opt(type=click.Choice(["latency", "throughput"], case_sensitive=False)),
        "runtimes": Opt(("--runtime",), multiple=True, help="Only this runtime (repeatable)."),
        "limit": Opt(type=click.IntRange(min=1)),
        "data": Opt(type=click.Path(path_type=Path)),
        "output": Opt(("-o", "--output"), type=click.Path(path_type=Path)),
        "compare": Opt(type=click.Path(path_type=Path)),
        "fail_on_regression": Opt(type=click.FloatRange(min=0)),
        "verify": Opt(help="Measure artifacts whose sha256 no longer matches the manifest (edited on purpose)."),
    })(command)


@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace the edgetl bench reports at -o (only edgetl's reports).")
@handle_errors
@_bench_options
def bench(inputs, overwrite, values, given) -> None:
    """Latency and accuracy drop of every artifact of one or more RUNs (or of artifact files), side by side.

    Several runs (a model and its pruned child) share one table and plot; keys and labels name the run.
    With no input, the most recent run under ./runs. -o must be a new or empty folder, or reports edgetl
    wrote (replaced with --overwrite).
    """
    from rich.console import Console

    inputs = inputs or (_run_or_latest(None),)

    from .bench import BenchConfig, benchmark, render_comparison, render_table
    from .config import build
    from .errors import EdgetlError, RegressionError

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
        console.print(f"  note: {note}", highlight=False)
    if report.data.get("comparison"):
        console.print(render_comparison(report.data["comparison"]))
    click.echo(f"reports: {', '.join(str(p) for p in report.files.values())}")
    if report.failed:
        raise EdgetlError(f"{len(report.failed)} artifact(s) failed: "
                          + "; ".join(f"{r['key']}: {r['reason']}" for r in report.failed))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def status(run: Path | None, as_json: bool) -> None:
    """What a RUN holds: each stage, and whether its files are current, stale, modified, missing or unsafe
    (a symlink leaving the run folder: replace it with the file itself).

    RUN defaults to the most recent run under ./runs. Exits 0 when every stage is current, 4 when
    something needs re-running or replacing.
    """
    import json

    from .run import run_status

    run = _run_or_latest(run)

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


def _compile_options(command):
    from .config import Opt, options_from
    from .toolchains.trt_settings import CompileConfig

    return options_from(CompileConfig, custom={
        "strongly_typed": Opt(decls=("--strongly-typed/--precision-flags",),
                              help="Strongly typed network from the FP16 ONNX, or TensorRT 10's precision flags "
                                   "[default: strongly typed from TensorRT 10.12; always on 11]."),
        "output": Opt(type=click.Path(path_type=Path, dir_okay=False)),
    })(command)


@cli.command("compile")
@click.argument("source", type=click.Path(path_type=Path), required=False)
@click.option("--overwrite", is_flag=True, help="Replace the engine edgetl built at --output (only such an engine).")
@handle_errors
@_compile_options
def compile_command(source, overwrite, values, given) -> None:
    """Build the TensorRT engine of a jetson / nvidia-gpu export, on the device that will run it.

    SOURCE is a run folder (its TARGET/PRECISION export; default: the latest run under ./runs) or an
    artifact folder copied to the device (the ONNX files + build.json). Needs TensorRT and an NVIDIA GPU
    (JetPack's TensorRT on a Jetson). Writes the raw engine (model.engine, loadable by trtexec, DeepStream
    and C++), its fingerprint model.engine.json, layers.json and the reusable timing.cache.
    """
    from .config import build
    from .toolchains.tensorrt_engine import compile_engine
    from .toolchains.trt_settings import CompileConfig

    if source is None:
        source = _run_or_latest(None)
    result = compile_engine(source, build(CompileConfig, values), overwrite=overwrite)
    fallback = f", {len(result.gpu_fallback_layers)} layer(s) fell back to the GPU" if result.gpu_fallback_layers else ""
    click.echo(f"{result.engine}: {result.executed_precision or result.precision} on {result.device}"
               f"{' (strongly typed)' if result.strongly_typed else ''}, built in {result.build_s:.0f} s{fallback}; "
               f"fingerprint {result.sidecar.name}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def targets(as_json: bool) -> None:
    """The device profiles `edgetl export --target` builds for, one line each."""
    import dataclasses
    import json

    from .profiles import all_targets

    profiles = all_targets()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(p) for p in profiles], indent=2))
        return
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        precisions = "/".join(p.precisions)
        click.echo(f"{p.name:<{width}}  {p.toolchain:<8}  {precisions:<14}  {p.description}")


from . import cli_bundles, cli_prune_tune  # noqa: E402,F401  (register package, predict, prune and tune on cli)


def _command_wall_s() -> float:
    """Seconds since this process started (interpreter and imports included)."""
    import time

    import psutil

    return time.time() - psutil.Process().create_time()


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
