"""What every command shares: one-line errors, the latest run, deprecated spellings, options that do not apply."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from ..errors import EdgetlError


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


def run_or_latest(run: Path | None) -> Path:
    """RUN as given, or the most recently modified run under ./runs (said on stderr)."""
    if run is not None:
        return run
    from ..run import latest_run

    run = latest_run()
    click.echo(f"note: no RUN given: using {run}, the most recent run under ./runs", err=True)
    return run


class Command(click.Command):
    """A command that still takes the spellings of an earlier release (``renamed``: old -> new option),
    with a warning on stderr; they are not shown in --help."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, [self._respell(arg) for arg in args])

    def _respell(self, arg: str) -> str:
        name, eq, value = arg.partition("=")
        new = self.renamed.get(name)
        if new is None:
            return arg
        click.echo(f"warning: {name} is deprecated and will be removed in the next release: use {new}", err=True)
        return f"{new}{eq}{value}"


def refuse_unless(condition: bool, given: Iterable[str], options: Iterable[str], needs: str) -> None:
    """A one-line usage error when options that only apply with ``needs`` were given without it."""
    names = sorted(set(given) & set(options))
    if names and not condition:
        flags = ", ".join("--" + n.replace("_", "-") for n in names)
        raise click.UsageError(f"{flags} {'applies' if len(names) == 1 else 'apply'} only with {needs}")


def command_wall_s() -> float:
    """Seconds since this process started (interpreter and imports included)."""
    import time

    import psutil

    return time.time() - psutil.Process().create_time()
