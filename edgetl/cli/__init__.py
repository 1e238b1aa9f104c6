"""The ``edgetl`` command line: parse options, call the library, print the result.

The group holds one command per stage of :data:`edgetl.stages.STAGES` (each built from its config with
the shared option groups of :mod:`.args`) plus the commands that only read: status, doctor, models,
targets, and predict and demo. An :class:`~edgetl.errors.EdgetlError` becomes one line on stderr and a
non-zero exit (no traceback); anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import click

from .. import __version__
from ._common import handle_errors, run_or_latest
from .info import demo, doctor, models, status, targets
from .package import predict


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
    from .._console import setup_logging

    setup_logging(verbose)


def _register() -> None:
    from ..stages import all_stages

    for stage in all_stages():
        command = stage.click_command
        if command is not None:
            cli.add_command(command)
    for command in (status, predict, doctor, models, targets, demo):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="edgetl")


__all__ = ["cli", "handle_errors", "main", "run_or_latest"]
