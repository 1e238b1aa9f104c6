"""``edgetl compile``: the TensorRT engine of a jetson / nvidia-gpu build, on the device."""

from __future__ import annotations


import click

from ._common import Command, handle_errors, run_or_latest
from .args import output_field, overwrite_option, run_argument, verify_option


def _compile_options(command):
    from ..config import Opt, options_from
    from ..toolchains.trt_settings import CompileConfig

    return options_from(CompileConfig, custom={
        "strongly_typed": Opt(decls=("--strongly-typed/--precision-flags",),
                              help="Strongly typed network from the FP16 ONNX, or TensorRT 10's precision flags "
                                   "[default: strongly typed from TensorRT 10.12; always on 11]."),
        "output": output_field("Engine file [default: beside the ONNX it is built from].", dir_okay=False),
    })(command)


@click.command("compile", cls=Command)
@run_argument("source")
@overwrite_option("the engine edgetl built at --output (only such an engine)")
@verify_option("Build from")
@handle_errors
@_compile_options
def compile_command(source, overwrite, no_verify, values, given) -> None:
    """Build the TensorRT engine of a jetson / nvidia-gpu export, on the device that will run it.

    SOURCE is a run folder (its TARGET/PRECISION export; default: the latest run under ./runs) or an
    artifact folder copied to the device (the ONNX files + build.json). Needs TensorRT and an NVIDIA GPU
    (JetPack's TensorRT on a Jetson). Writes the raw engine (model.engine, loadable by trtexec, DeepStream
    and C++), its fingerprint model.engine.json, layers.json and the reusable timing.cache.
    """
    from ..config import build
    from ..toolchains.tensorrt_engine import compile_engine
    from ..toolchains.trt_settings import CompileConfig

    result = compile_engine(run_or_latest(source), build(CompileConfig, values), overwrite=overwrite,
                            verify=not no_verify)
    fallback = f", {len(result.gpu_fallback_layers)} layer(s) fell back to the GPU" if result.gpu_fallback_layers else ""
    click.echo(f"{result.engine}: {result.executed_precision or result.precision} on {result.device}"
               f"{' (strongly typed)' if result.strongly_typed else ''}, built in {result.build_s:.0f} s{fallback}; "
               f"fingerprint {result.sidecar.name}")
