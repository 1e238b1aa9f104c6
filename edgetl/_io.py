"""Atomic file writing and checksums: nothing edgetl writes is ever seen half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RunFolderError

_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on device: free some space and run the command again",
    getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded: free some space and run the command again",
    errno.EFBIG: "file too large for this process's file-size limit (`ulimit -f`): raise the limit or write "
                 "elsewhere",
    errno.EROFS: "read-only file system: choose a writable folder",
}
"""errno values that mean a write failed for a reason of the machine, not of edgetl, with what to do."""
_WRITER_FAILURE = ("writ", "unexpected pos")
"""How torch.save and OpenVINO word a failed write (they raise RuntimeError without the errno)."""


def current_umask() -> int:
    """The process umask, read from /proc where possible (``os.umask`` can only read it by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def disk_full_is_an_error(path: str | os.PathLike[str], probe: Path | None = None) -> Iterator[None]:
    """Turn a failed write in the block (full disk, quota, file-size limit, read-only file system) into the
    one-line :class:`RunFolderError` "cannot write PATH: reason". ``probe``: the file being written, used to
    learn the errno a writer that raises RuntimeError (torch.save, OpenVINO) did not give."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        code = exc.errno if isinstance(exc, OSError) else _writer_errno(exc, path, probe)
        if code not in _WRITE_FAILURES:
            raise
        raise RunFolderError(f"cannot write {path}: {_WRITE_FAILURES[code]}") from exc


def _writer_errno(exc: RuntimeError, path: str | os.PathLike[str], probe: Path | None) -> int | None:
    """The errno behind a writer's RuntimeError about a failed write: found by appending one byte to the
    half-written file (the same limit refuses it again), else by the free space left; None if neither tells."""
    if not any(word in str(exc).lower() for word in _WRITER_FAILURE):
        return None
    if probe is not None and probe.is_file():
        try:
            with open(probe, "ab") as fh:
                fh.write(b"\0")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            return err.errno
    try:
        return errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < 16 * 2**20 else None
    except OSError:
        return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for writers that insist on a file name (torch.save, onnx.save, openvino.save_model).
    ``suffix`` keeps an extension some writers look at (e.g. ``.onnx``).
    """
    target = Path(path)
    with disk_full_is_an_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with disk_full_is_an_error(target, probe=tmp):  # the half-written file still exists while it decides
            try:
                os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 keeps other users out whatever the umask
            finally:
                os.close(fd)
            yield tmp
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string to the second (manifest and report stamps)."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: str | os.PathLike[str], error: type[Exception], missing: str, damaged: str = "") -> Any:
    """Parse a JSON file, raising ``error`` with ``missing`` when it is absent and a one-line reason when
    it does not parse (``damaged`` is appended as advice)."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}){'; ' + damaged if damaged else ''}") from exc


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary directory beside ``final`` that replaces it only if the block succeeds.

    Used for multi-file artifacts (OpenVINO IR's .xml + .bin) so they appear together or not at all.
    """
    target = Path(final)
    with disk_full_is_an_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 keeps other users out whatever the umask
            yield tmp
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old, target)  # put the old folder back: never leave the final path empty
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
