from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

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
    assert set(entry.files) == {"model.xml", "model.bin"} and entry.bytes == 10 and entry.sha256 is None


def test_require_explains_what_to_do(tmp_path: Path):
    manifest = make(tmp_path)
    with pytest.raises(RunFolderError, match="is missing: run finetune"):
        manifest.require("finetune", "run finetune")


def test_damaged_manifest(tmp_path: Path):
    (tmp_path / "edgetl.json").write_text("{ nope")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        Manifest.load(tmp_path)


# -- schema 2: merge on save, lineage, validation (issue 7) ---------------------------------------------------
def test_two_writers_of_one_run_keep_each_others_stages(tmp_path: Path):
    """edgetl 0.1: each command wrote back the whole manifest it had read, so the slower one erased the other."""
    make(tmp_path).save()
    fp32, fp16 = Manifest.load(tmp_path / "run"), Manifest.load(tmp_path / "run")  # both read the same file
    fp32.begin("intel-cpu:fp32", {})
    fp16.begin("intel-cpu:fp16", {})
    fp32.finish("intel-cpu:fp32", {"top1": 0.9})
    fp16.finish("intel-cpu:fp16", {"top1": 0.8})
    stages = Manifest.load(tmp_path / "run").stages
    assert stages["intel-cpu:fp32"]["status"] == stages["intel-cpu:fp16"]["status"] == "complete"


def _hammer(run_dir: str, name: str, rounds: int) -> None:
    manifest = Manifest.load(run_dir)
    for i in range(rounds):
        manifest.begin(f"{name}-{i}", {"i": i})
        manifest.finish(f"{name}-{i}", {"i": i})


def test_concurrent_processes_lose_no_stage(tmp_path: Path):
    import multiprocessing

    make(tmp_path).save()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "run"), f"p{n}", 15)) for n in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    stages = Manifest.load(tmp_path / "run").stages
    assert len(stages) == 45 and all(s["status"] == "complete" for s in stages.values())


def test_schema_1_runs_are_read_and_migrated(tmp_path: Path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "edgetl.json").write_text(json.dumps({
        "schema": 1, "model": {"name": "m"}, "classes": ["a"], "preprocessing": {},
        "stages": {"onnx": {"status": "complete", "options": {}, "metrics": {}, "artifacts": {}}}}))
    manifest = Manifest.load(run)
    assert manifest.parent is None and manifest.stage("onnx")["inputs"] == {}
    manifest.begin("bench", {})
    assert json.loads((run / "edgetl.json").read_text())["schema"] == 2


def test_newer_schema_asks_for_an_upgrade(tmp_path: Path):
    (tmp_path / "edgetl.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(RunFolderError, match="upgrade edgetl"):
        Manifest.load(tmp_path)


def test_child_run_names_its_parent_and_inherits_the_split(tmp_path: Path):
    from edgetl.run import create_child
    from edgetl.run.split import write_split

    parent = make(tmp_path)
    image = tmp_path / "img.png"
    image.write_bytes(b"png")
    write_split(parent.run_dir, ["a", "b"], [(image, 0)], [(image, 1)], "folder")
    parent.set("dataset", {"split": "split.json"})
    parent.save()
    child = create_child(parent.run_dir, tmp_path / "child", stage="prune")
    loaded = Manifest.load(tmp_path / "child")
    assert loaded.parent["run"] == str(parent.run_dir.resolve()) and loaded.parent["stage"] == "prune"
    assert loaded.classes == ["a", "b"] and loaded.preprocessing == {"input_size": 8}
    split = (child.run_dir / "split.json").read_bytes()
    assert loaded.data["dataset"]["split_sha256"] == hashlib.sha256(split).hexdigest()


def test_stage_context_records_inputs_and_failures(tmp_path: Path):
    from edgetl.run import stage

    manifest = make(tmp_path)
    manifest.begin("finetune", {})
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"weights")
    manifest.add_artifact("finetune", tmp_path / "run" / "checkpoint.pt")
    manifest.finish("finetune")
    with pytest.raises(ValueError, match="^parity failed\nsecond line$"):
        with stage(manifest, "onnx", {"opset": 18}, ["checkpoint.pt"]):
            raise ValueError("parity failed\nsecond line")
    record = Manifest.load(tmp_path / "run").stage("onnx")
    assert record["status"] == "failed" and record["error"] == "ValueError: parity failed"
    assert set(record["inputs"]) == {"checkpoint.pt"}
    with stage(manifest, "onnx", {}, ["checkpoint.pt"]) as st:
        (tmp_path / "run" / "model.onnx").write_bytes(b"onnx")
        st.artifact(tmp_path / "run" / "model.onnx", runtime="onnxruntime")
        st.metrics["ok"] = 1
    assert Manifest.load(tmp_path / "run").completed("onnx")
