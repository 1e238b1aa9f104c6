"""``edgetl package`` and ``edgetl predict``: the bundle commands."""

from __future__ import annotations

from pathlib import Path

import click

from ..run.keys import Precision
from ._common import Command, handle_errors, run_or_latest
from .args import output_field, overwrite_option, precision_field, run_argument


def _package_options(command):
    from ..config import Opt, options_from
    from ..package import PackageConfig

    return options_from(PackageConfig, custom={
        "target": Opt(help="Device profile whose artifact is packaged (see `edgetl targets`)."),
        "precision": precision_field("Precision [default: the only one built, else the target's default]."),
        "folder": Opt(("--dir",), help="Write an unpacked folder instead of a .tar.gz."),
        "output": output_field("Bundle path [default: RUN/bundle-TARGET-PRECISION.tar.gz]."),
        "verify": Opt(("--no-verify",), help="Package artifacts whose sha256 no longer matches the manifest."),
    })(command)


@click.command("package", cls=Command)
@run_argument()
@overwrite_option("the edgetl bundle at -o (only an edgetl bundle)")
@handle_errors
@_package_options
def package_command(run, overwrite, values, given) -> None:
    """Bundle RUN's artifact for one target for an app: model, labels, preprocessing, README, C++ samples.

    Writes RUN/bundle-TARGET-PRECISION.tar.gz (or the folder, with --dir). Load it with
    `from edgetl.runtime import load` (no torch needed) or `edgetl predict BUNDLE IMAGES...`.
    -o must be a new path, or a bundle edgetl wrote (replaced with --overwrite).
    """
    from ..config import build
    from ..package import PackageConfig, package

    result = package(run_or_latest(run), build(PackageConfig, values), overwrite=overwrite)
    meta = result.meta
    top1 = f", top-1 {100 * meta['accuracy']['top1']:.2f}% when benched" if meta["accuracy"] else ""
    click.echo(f"{result.path}: {meta['target']} {meta['precision']} ({meta['model']['file']} under "
               f"{meta['runtime']}), {len(meta['files'])} files{top1}")


@click.command("predict", cls=Command, renamed={"--batch": "--batch-size"})
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--target", help="With a RUN: the target whose bundle to use [default: intel-cpu].")
@click.option("--precision", type=click.Choice(Precision.values()),
              help="With a RUN: the precision [default: the only one built, else the target's default].")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", "batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per inference call.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def predict(source, images, target, precision, top_k, batch, as_json) -> None:
    """Top-k classes of IMAGES (files, folders searched recursively, globs) with a bundle or a RUN.

    SOURCE is a bundle (.tar.gz or folder) or a run folder; a run is packaged on the fly (in a temporary
    folder) for --target/--precision, so the answers are the bundle's.
    """
    from ..runtime.cli import expand_images, predictions_json, render_predictions

    files = expand_images(images)
    with _bundle_for(source, target, precision) as bundle, _load_bundle(bundle) as model:
        predictions = model.predict(files, top_k=top_k, batch_size=batch)
    click.echo(predictions_json(predictions) if as_json else render_predictions(predictions))


def _load_bundle(path: Path):
    from ..runtime import load

    return load(path)


def _bundle_for(source: Path, target: str | None, precision: str | None):
    """A context giving a bundle path: SOURCE itself, or a bundle of the run SOURCE in a temporary folder."""
    import contextlib
    import tempfile

    from ..run.manifest import is_run_folder

    if not is_run_folder(source):
        if target or precision:
            raise click.UsageError("--target/--precision apply to a RUN, not to a bundle")
        return contextlib.nullcontext(source)

    @contextlib.contextmanager
    def packaged():
        from ..package import PackageConfig, package

        with tempfile.TemporaryDirectory(prefix="edgetl-predict-") as tmp:
            config = PackageConfig(target=target or "intel-cpu", precision=precision, folder=True,
                                   output=str(Path(tmp) / "bundle"), allow_budget_miss=True)
            result = package(source, config)
            budget = result.meta["budget"]
            if not budget["met"]:
                click.echo(f"warning: this build missed its accuracy budget (top-1 drop {budget['drop_points']:.2f} "
                           f"points > {budget['max_drop']:g}); `edgetl package` refuses it", err=True)
            yield result.path
    return packaged()
