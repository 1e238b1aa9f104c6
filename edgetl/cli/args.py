"""Option groups shared by commands (as Polygraphy's ``tools/args``): one spelling, one meaning, one help text.

    run_argument      RUN, the latest run under ./runs by default
    verify_option     --no-verify: use run files whose sha256 no longer matches the manifest
    overwrite_option  --overwrite: replace what edgetl wrote at the output
    output_option     -o/--output
    json_option       --json
    budget_field      --max-drop POINTS|none: the accuracy budget
"""

from __future__ import annotations

from pathlib import Path

import click


def run_argument(name: str = "run"):
    return click.argument(name, type=click.Path(path_type=Path), required=False)


def verify_option(what: str = "Use"):
    return click.option("--no-verify", "no_verify", is_flag=True,
                        help=f"{what} run files whose sha256 no longer matches the manifest (you edited them on purpose).")


def overwrite_option(what: str):
    return click.option("--overwrite", is_flag=True, help=f"Replace {what}.")


def json_option():
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def output_field(help_text: str | None = None, **path_kwargs):
    """The ``output`` field of a config as ``-o/--output``."""
    from ..config import Opt

    return Opt(("-o", "--output"), type=click.Path(path_type=Path, **path_kwargs), help=help_text)


def precision_field(help_text: str | None = None):
    from ..config import Opt
    from ..profiles import PRECISIONS

    return Opt(type=click.Choice(PRECISIONS), help=help_text)


def threads_field():
    from ..config import Opt

    return Opt(type=click.IntRange(min=1), help="CPU threads [default: all cores].")


class _Budget(click.ParamType):
    """A number of top-1 points (0-100), or ``none`` (no budget)."""

    name = "POINTS|none"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) or value is None:
            return value
        if str(value).strip().lower() == "none":
            return "none"
        try:
            points = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of top-1 points nor 'none'", param, ctx)
        if not 0 <= points <= 100:
            self.fail(f"{points:g} is not between 0 and 100 top-1 points", param, ctx)
        return points


def budget_field(help_text: str):
    """The ``max_drop`` field as ``--max-drop POINTS|none``."""
    from ..config import Opt

    return Opt(type=_Budget(), help=help_text)
