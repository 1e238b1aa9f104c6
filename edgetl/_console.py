"""Terminal output: one rich console on stderr and progress bars that vanish when not wanted."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _Stderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (survives test runners swapping it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _stdout_handlers(logger_name: str = "nncf") -> list[logging.StreamHandler]:
    """The logger's own handlers that write to stdout (NNCF installs one on import)."""
    return [h for h in logging.getLogger(logger_name).handlers
            if type(h) is logging.StreamHandler and (h.stream in (sys.stdout, sys.__stdout__)
                                                     or getattr(h.stream, "name", None) == "<stdout>")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)], force=True)
    for handler in _stdout_handlers():  # stdout carries only results
        handler.setStream(_Stderr())
    for noisy in ("nncf", "matplotlib", "PIL", "onnxslim", "torch", "onnxscript", "onnx_ir", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU machines


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A rich Progress; disabled (no output) when ``enabled`` is false."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        yield progress


@contextlib.contextmanager
def stdout_to_stderr(logger_name: str = "nncf") -> Iterator[None]:
    """Send stdout, and ``logger_name``'s stdout log handlers, to stderr for the block (third-party
    progress bars and log lines must not mix with results); everything is restored afterwards."""
    moved = [(handler, handler.setStream(_Stderr())) for handler in _stdout_handlers(logger_name)]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
