from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl._io import atomic_path, write_json
from edgetl.errors import RunFolderError
from edgetl.manifest import Manifest


def make(tmp_path: Path) -> Manifest:
    return Manifest.create(tmp_path / "run", model={"name": "m"}, classes=["a", "b"], preprocessing={"input_size": 8})


def test_stage_lifecycle_and_checksums(tmp_path: Path):
    manifest = make(tmp_path)
    manifest.begin("export", {"opset": 18, "path": Path("x")})
    assert Manifest.load(tmp_path / "run").stage("export")["status"] == "running"
    artifact = tmp_path / "run" / "model.bin"
    artifact.write_bytes(b"weights")
    manifest.add_artifact("export", artifact, runtime="onnxruntime")
    manifest.finish("export", {"top1": 0.5})
    loaded = Manifest.load(tmp_path / "run")
    assert loaded.completed("export") and loaded.stage("export")["options"]["path"] == "x"
    assert loaded.verify() == []
    artifact.write_bytes(b"tampered")
    assert "changed since it was recorded" in loaded.verify()[0]
    artifact.unlink()
    assert "missing" in loaded.verify()[0]


def test_directory_artifacts_list_every_file(tmp_path: Path):
    manifest = make(tmp_path)
    manifest.begin("ir", {})
    (tmp_path / "run" / "ir").mkdir()
    (tmp_path / "run" / "ir" / "model.xml").write_text("<xml/>")
    (tmp_path / "run" / "ir" / "model.bin").write_bytes(b"1234")
    entry = manifest.add_artifact("ir", tmp_path / "run" / "ir")
    assert set(entry["files"]) == {"model.xml", "model.bin"} and entry["bytes"] == 10


def test_require_explains_what_to_do(tmp_path: Path):
    manifest = make(tmp_path)
    with pytest.raises(RunFolderError, match="is missing: run finetune"):
        manifest.require("finetune", "run finetune")


def test_damaged_manifest(tmp_path: Path):
    (tmp_path / "edgetl.json").write_text("{ nope")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
