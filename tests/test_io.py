"""Atomic writes: file modes follow the umask, and a full disk is a one-line error that leaves old files intact."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from edgetl._io import atomic_path, staging_dir, write_json
from edgetl.errors import RunFolderError


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for one test; the old one is restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)], ids=["022", "077", "002"])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    report = write_json(tmp_path / "report.json", {"a": 1})
    with atomic_path(tmp_path / "model.onnx", suffix=".onnx") as tmp:
        tmp.write_bytes(b"onnx")
    with staging_dir(tmp_path / "ir") as folder:
        (folder / "model.xml").write_text("<xml/>")
    assert _mode(report) == file_mode
    assert _mode(tmp_path / "model.onnx") == file_mode
    assert _mode(tmp_path / "ir") == dir_mode
    assert _mode(tmp_path / "ir" / "model.xml") == file_mode


def test_umask_is_left_unchanged(tmp_path, umask):
    umask(0o027)
    write_json(tmp_path / "a.json", {})
    with staging_dir(tmp_path / "ir"):
        pass
    current = os.umask(0o022)
    os.umask(current)
    assert current == 0o027


def _disk_full(*args, code: int = errno.ENOSPC, **kwargs):
    raise OSError(code, os.strerror(code))


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_full_disk_in_write_json_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, code):
    target = write_json(tmp_path / "report.json", {"old": True})
    monkeypatch.setattr(Path, "write_text", lambda *args, **kwargs: _disk_full(code=code))
    with pytest.raises(RunFolderError, match=r"^cannot write .*report\.json: (no space left on device|disk quota exceeded): free some space"):
        write_json(target, {"new": True})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert _leftovers(tmp_path, {"report.json"}) == []


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError, match="in the block"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("in the block")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_full_disk_in_atomic_path_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    with pytest.raises(RunFolderError, match=r"^cannot write .*model\.onnx: no space left on device") as info:
        with atomic_path(target, suffix=".onnx") as tmp:
            tmp.write_bytes(b"half a mod")
            _disk_full()
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"old model"
    assert _leftovers(tmp_path, {"model.onnx"}) == []


def test_full_disk_in_staging_dir_keeps_the_old_folder(tmp_path):
    final = tmp_path / "ir"
    final.mkdir()
    (final / "model.xml").write_text("old")
    with pytest.raises(RunFolderError, match=r"^cannot write .*ir: no space left on device: free some space"):
        with staging_dir(final) as folder:
            (folder / "model.xml").write_text("new")
            _disk_full()
    assert (final / "model.xml").read_text() == "old"
    assert _leftovers(tmp_path, {"ir"}) == []


def test_other_os_errors_are_not_reworded(tmp_path):
    with pytest.raises(PermissionError, match=r"^\[Errno 13\] Permission denied$"):
        with atomic_path(tmp_path / "x.json"):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_umask_is_read_without_proc(monkeypatch, umask):
    from edgetl import _io

    def no_proc(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "no /proc here")

    umask(0o027)
    monkeypatch.setattr(_io, "open", no_proc, raising=False)
    assert _io.current_umask() == 0o027
    monkeypatch.undo()
    assert _io.current_umask() == 0o027


def test_torch_save_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch):
    """torch.save reports ENOSPC as a RuntimeError about a failed write, not as an OSError."""
    import shutil

    from edgetl._io import atomic_path

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(RunFolderError, match="^cannot write .*checkpoint.pt: no space left on device"):
        with atomic_path(tmp_path / "checkpoint.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors keep their own message
        with atomic_path(tmp_path / "checkpoint.pt"):
            raise RuntimeError("shape mismatch")


_FSIZE_LIMITED_SAVE = """
import resource, sys, torch
from edgetl._io import atomic_path
from edgetl.errors import EdgetlError
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    with atomic_path(sys.argv[1], suffix=".pt") as tmp:
        torch.save({"w": torch.zeros(1 << 18)}, tmp)  # 1 MiB: past the 64 KiB limit
except EdgetlError as exc:
    sys.exit(f"error: {exc}")
"""


def test_a_file_size_limit_hit_by_torch_save_is_one_line(tmp_path: Path):
    """EFBIG: torch.save says only "unexpected pos"; the errno is learned by probing the half-written file."""
    import subprocess
    import sys

    (tmp_path / "checkpoint.pt").write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", _FSIZE_LIMITED_SAVE, str(tmp_path / "checkpoint.pt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {tmp_path / 'checkpoint.pt'}: file too large")
    assert "ulimit -f" in lines[0]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"old"
    assert _leftovers(tmp_path, {"checkpoint.pt"}) == []


@pytest.mark.parametrize("code, reason", [(errno.EFBIG, "file too large"), (errno.EROFS, "read-only file system")])
def test_other_failed_writes_are_the_same_one_line(tmp_path, code, reason):
    with pytest.raises(RunFolderError, match=rf"^cannot write .*report\.json: {reason}") as info:
        with atomic_path(tmp_path / "report.json"):
            _disk_full(code=code)
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path, set()) == []


def test_finetune_past_the_file_size_limit_is_one_line_and_leaves_nothing(tmp_path: Path):
    """The issue's reproduction: `ulimit -f` smaller than a checkpoint, through the CLI."""
    import resource
    import subprocess
    import sys

    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data")
    limit = 512 * 1024  # MobileNetV3-small's checkpoint is several MB

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-m", "edgetl.cli", "finetune", str(data), "--model", "mobilenet_v3_small",
                           "--no-pretrained", "--epochs", "1", "--image-size", "32", "--workers", "0",
                           "-o", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          preexec_fn=cap, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "file too large" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# -- staging_dir replacing an existing folder ----------------------------------------------------------
def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_ir(tmp_path) -> Path:
    final = tmp_path / "ir"
    (final / "sub").mkdir(parents=True)
    (final / "model.xml").write_text("old xml")
    (final / "model.bin").write_bytes(b"old bin")
    (final / "sub" / "report.json").write_text("{}")
    return final


def test_staging_dir_replaces_an_existing_folder_whole(tmp_path, old_ir):
    before = _tree(old_ir)
    with staging_dir(old_ir) as folder:
        assert folder.parent == tmp_path and folder != old_ir
        (folder / "model.xml").write_text("new xml")
        (folder / "weights.bin").write_bytes(b"new bin")
        assert _tree(old_ir) == before  # readers see the old folder until the block succeeds
    # the new content only: files the new build did not write (model.bin, sub/) do not survive
    assert _tree(old_ir) == {"model.xml": b"new xml", "weights.bin": b"new bin"}
    assert _leftovers(tmp_path, {"ir"}) == []  # no staging folder, no .ir.old


def test_staging_dir_failure_keeps_the_old_folder_as_it_was(tmp_path, old_ir):
    before = _tree(old_ir)
    # the error itself, not reworded
    with pytest.raises(ValueError, match="^conversion failed$"), staging_dir(old_ir) as folder:
        (folder / "model.xml").write_text("half")
        raise ValueError("conversion failed")
    assert _tree(old_ir) == before
    assert _leftovers(tmp_path, {"ir"}) == []


def test_staging_dir_clears_the_backup_a_crash_left(tmp_path, old_ir):
    (tmp_path / ".ir.old").mkdir()
    (tmp_path / ".ir.old" / "model.xml").write_text("older")
    with staging_dir(old_ir) as folder:
        (folder / "model.xml").write_text("new")
    assert _tree(old_ir) == {"model.xml": b"new"}
    assert _leftovers(tmp_path, {"ir"}) == []


def test_staging_dir_keeps_the_old_folder_when_the_swap_fails(tmp_path, old_ir, monkeypatch):
    before = _tree(old_ir)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".ir.") and not Path(src).name.endswith(".old") and Path(dst) == old_ir:
            raise OSError(errno.EACCES, "Permission denied")  # the staged folder cannot be moved into place
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Permission denied"), staging_dir(old_ir) as folder:
        (folder / "model.xml").write_text("new")
    monkeypatch.undo()
    assert _tree(old_ir) == before
