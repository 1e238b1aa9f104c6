"""Where a run-relative path really leads: the one check that a run's files stay inside the run folder.

``RUN/rel`` is resolved (symlinks followed, ``..`` applied) and compared with the resolved run folder. A
symlink that stays inside the run is followed; one that leaves it (to ``/etc/passwd``, or to an identical
copy elsewhere) is refused, so status, bench, export, build and package never read, hash or copy a file
the run does not hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import IntegrityError, RunFolderError


def run_relative(run_dir: str | Path, path: str | Path) -> str:
    """``path`` as a POSIX path relative to ``run_dir`` (see :func:`inside_name`), after checking that it
    resolves inside the run folder.

    A path spelled inside the run that resolves outside it: :class:`IntegrityError` naming the symlink.
    Any other path outside the run: :class:`RunFolderError`.
    """
    root = Path(run_dir).resolve()
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise IntegrityError(f"{path} is a symlink loop: replace it with the file itself") from None
    name = inside_name(run_dir, path)
    if name is None:
        raise RunFolderError(f"{path} is outside the run folder {run_dir}: edgetl only uses files inside the run")
    if resolved.is_relative_to(root):
        return name
    link = _leaving_link(Path(run_dir), Path(name), root) or Path(path)
    raise IntegrityError(f"{link} is a symlink leaving the run folder {run_dir} (to {link.resolve()}): replace it "
                         "with the file itself")


def inside_name(run_dir: str | Path, path: str | Path) -> str | None:
    """``path``'s run-relative POSIX name, both sides made absolute first: as spelled when it is spelled
    inside the run (``..`` applied, symlinks not followed), else as resolved; None when it is outside."""
    lexical = Path(os.path.abspath(path))
    root = Path(run_dir).resolve()
    for base in (Path(os.path.abspath(run_dir)), root):
        if lexical.is_relative_to(base):
            return lexical.relative_to(base).as_posix()
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None


def run_file(run_dir: str | Path, rel: str) -> Path:
    """``RUN/rel`` once :func:`run_relative` has checked that it stays inside the run folder."""
    path = Path(run_dir) / rel
    run_relative(run_dir, path)
    return path


def _leaving_link(run_dir: Path, rel: Path, root: Path) -> Path | None:
    """The first symlink along ``RUN/rel`` that resolves outside the run folder (None when none does)."""
    current = run_dir
    for part in rel.parts:
        current = current / part
        if current.is_symlink() and not current.resolve().is_relative_to(root):
            return current
    return None
