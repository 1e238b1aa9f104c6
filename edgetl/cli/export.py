"""``edgetl export``: ONNX with a parity check, and with ``--target`` the target build."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import Command, handle_errors, refuse_unless, run_or_latest
from .args import budget_field, precision_field, run_argument, verify_option


def _export_options(command):
    from ..build import TargetBuildConfig
    from ..config import Opt, options_from
    from ..export import ExportConfig
    from ..toolchains.trt_settings import CALIBRATION_METHODS, HARDWARE_COMPATIBILITY

    return options_from(ExportConfig, TargetBuildConfig, skip=("target",), custom={
        "dynamic_batch": Opt(("--static-batch",), help="Fix the batch dimension instead of leaving it dynamic."),
        "simplify": Opt(help="Skip onnxslim."),
        "parity_images": Opt(type=click.IntRange(min=0), to_field=lambda v: v or None,
                             help="Check this many val images, sampled class-balanced (0: all of them)."),
        "data": Opt(type=click.Path(path_type=Path), help="Labelled folder (the run's classes) for the parity "
                                                          "check and target evaluation [default: the run's val split]."),
        "precision": precision_field("Target precision [default: the target's default]."),
        "calib_data": Opt(type=click.Path(path_type=Path)),
        "calib_size": Opt(type=click.IntRange(min=1)),
        "max_drop": budget_field("Top-1 points an FP16/INT8 build may lose vs the float model, on the run's val "
                                 "split [default: the target's max_drop, 1.0]; none: no budget. A miss keeps the "
                                 "build as budget-missed and exits non-zero."),
        "seed": Opt(help="Seed for calibration sampling."),
        "calibration": Opt(type=click.Choice(CALIBRATION_METHODS)),
        "dla_core": Opt(type=click.IntRange(min=0)),
        "max_batch": Opt(type=click.IntRange(min=1)),
        "hardware_compatibility": Opt(type=click.Choice(HARDWARE_COMPATIBILITY)),
    })(command)


def build_only_fields() -> set[str]:
    """Options of the target build that the ONNX export does not take (``data`` is shared)."""
    from ..build import TargetBuildConfig
    from ..config import config_fields
    from ..export import ExportConfig

    return set(config_fields(TargetBuildConfig)) - set(config_fields(ExportConfig)) - {"target"}


@click.command("export", cls=Command)
@run_argument()
@click.option("--target", help="Also build for a device profile (e.g. intel-cpu, jetson; see `edgetl targets`).")
@verify_option()
@handle_errors
@_export_options
def export(run, target, no_verify, values, given) -> None:
    """Export a fine-tuned RUN to ONNX and check it against PyTorch on real images.

    RUN defaults to the most recently modified run under ./runs. With --target, also build the device
    artifact (OpenVINO IR in RUN/intel-cpu/int8/; for jetson and nvidia-gpu the Q/DQ or FP16 ONNX that
    TensorRT builds its engine from, with the trtexec lines in build.json) within the target's accuracy
    budget: INT8 that misses it falls back, then runs quantization-aware training (RUN/TARGET/int8-qat/;
    --qat forces it, --no-qat forbids it; docs/qat.md). The ONNX export runs first when the run has none yet, when it is stale (exported from an older
    checkpoint), or when ONNX options given here differ from those it was exported with. Every run
    file used is checked against its recorded sha256 first. Build options (--precision, --max-drop, ...)
    need --target.
    """
    from ..build import TargetBuildConfig, build_target, check_build_config
    from ..config import build
    from ..export import ExportConfig, export_onnx, needs_export

    target = target or values.get("target")
    refuse_unless(target is not None, given, build_only_fields(), "--target (a target build)")
    run = run_or_latest(run)
    export_config = build(ExportConfig, values)
    if target is not None:  # an unknown target, precision or option fails before any work
        build_config = build(TargetBuildConfig, values, target=target)
        check_build_config(build_config)
    reason = needs_export(run, export_config, given) if target is not None else "asked"
    if reason is not None:
        if reason != "asked":
            click.echo(f"note: {reason}", err=True)
        _report_export(export_onnx(run, export_config, verify=not no_verify))
    elif target is not None:
        from ..run import Manifest
        from ..run.keys import ONNX

        recorded = Manifest.load(run).record(ONNX).options
        click.echo(f"note: reusing {run}/onnx/model.onnx (exported with opset {recorded.get('opset')}, "
                   f"{recorded.get('exporter')} exporter)", err=True)
    if target is not None:
        _report_build(build_target(run, build_config, verify=not no_verify))


def _report_export(result) -> None:
    m = result.metrics
    click.echo(f"{result.path}: max |ONNX - PyTorch| {m['max_abs_diff']:.2e}, top-1 agreement "
               f"{100 * m['top1_agreement']:.1f}% on {m['parity_images']} images"
               + (f" ({m['tie_flips']} numerical tie(s))" if m["tie_flips"] else ""))


def _report_build(built) -> None:
    m = built.metrics
    click.echo(f"{built.path}: top-1 {100 * m['top1']:.2f}% (float {100 * m['float_top1']:.2f}%, drop "
               f"{m['drop_points']:.2f} points), runs in {m['executed_precision']}, "
               f"batch-1 p50 {m['latency_p50_ms']} ms")
    if m.get("qat"):
        q = m["qat"]
        click.echo(f"  quantization-aware training: {q['epochs_run']} epoch(s), best at epoch {q['best_epoch']} (0: "
                   f"as calibrated), fake-quant val top-1 {100 * q['fake_quant_val_top1']:.2f}%")
    control = m.get("accuracy_control")
    if control and control.get("reverted_to_float"):
        names = m.get("float_modules") or control["reverted_to_float"]
        click.echo(f"  left in float to meet --max-drop: {', '.join(names)}")
