"""``edgetl finetune``: a new run from an image folder, or ``--resume RUN``."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import Command, command_wall_s, handle_errors
from .args import output_field, threads_field


def _finetune_options(command):
    from ..config import Opt, options_from
    from ..finetune import FinetuneConfig

    return options_from(FinetuneConfig, skip=("data",), custom={
        "output": output_field("Run folder [default: runs/DATA-MODEL, beside the dataset when run from inside it]."),
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
        "cache_features": Opt(("--no-cache-features",),
                              help="linear-probe: run the backbone every epoch instead of caching features."),
        "workers": Opt(type=click.IntRange(min=0), help="Data loader processes."),
        "threads": threads_field(),
        "freeze_bn": Opt(("--freeze-bn/--train-bn",)),
        "nproc": Opt(type=click.IntRange(min=1), help="Training processes on this machine (DistributedDataParallel, "
                                                      "torch's elastic launcher; --batch-size is the global batch, "
                                                      "split over them). Several machines: torchrun -m edgetl "
                                                      "finetune, see docs/distributed.md."),
        "sync_bn": Opt(("--sync-bn",), help="Several processes: synchronised BatchNorm (GPUs only)."),
    })(command)


@click.command("finetune", cls=Command, renamed={"--no-cache": "--no-cache-features"})
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder (only a run folder, and only once "
                                               "the new run has finished its first epoch).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in this folder (a fine-tuned or a pruned run) with its recorded options, data "
                   "order and RNG state; --epochs extends it; only --epochs, --patience, --workers, --threads, "
                   "--save-every-epoch may change.")
@handle_errors
@_finetune_options
def finetune(data, overwrite, resume_dir, values, given) -> None:
    """Fine-tune a pretrained backbone on an image folder (DATA/CLASS/*.jpg or DATA/{train,val}/CLASS).

    Every option can also come from --config FILE.yaml (e.g. the best configuration a search wrote);
    options typed here override the file. The resolved configuration is saved in the run's manifest.
    """
    from .. import finetune as ft
    from ..config import build
    from ..stages import resume
    from ..train.distributed import is_main

    if resume_dir is not None:
        if "output" in given or overwrite:
            raise click.UsageError("--resume continues RUN in place: -o/--overwrite do not apply")
        changes = {k: values[k] for k in given if k in values}
        if data is not None:
            changes["data"] = str(data)
        result = resume(resume_dir, changes=changes)
    else:
        data = data or values.get("data")
        if data is None:
            raise click.UsageError("DATA is required (or --resume RUN, or data: in --config)")
        result = ft.finetune(build(ft.FinetuneConfig, values, data=str(data)), overwrite=overwrite)
    if not is_main():  # a torchrun worker other than rank 0: rank 0 reports
        return
    m = result.metrics
    top5 = f"top-5 {100 * m['top5']:.2f}%  " if m["top5"] is not None else ""
    click.echo(f"{result.run_dir}: val top-1 {100 * m['top1']:.2f}%  {top5}"
               f"best epoch {m['best_epoch']}/{m['epochs_run']}  training {m['wall_time_s']:.0f} s, "
               f"command {command_wall_s():.0f} s")
    for name, acc in m["per_class"].items():
        click.echo(f"  {name:<24} {100 * acc:6.2f}%" if acc is not None else f"  {name:<24}   n/a")
