"""Typed stage and artifact records (edgetl/run/records.py): the JSON on disk round-trips unchanged, writers are
checked by field name, and the readers (bench discovery, packaging, integrity) see the same fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl.run.keys import Status
from edgetl.run.manifest import Manifest
from edgetl.run.records import ArtifactRecord, StageRecord
from edgetl.run.stage import stage

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "old_run" / "run"


def _manifest(tmp_path: Path) -> Manifest:
    manifest = Manifest.create(tmp_path / "run", model={"name": "tiny"}, classes=["a", "b"], preprocessing={})
    manifest.save()
    return manifest


def test_every_record_of_an_old_run_round_trips_to_the_same_json():
    data = json.loads((OLD_RUN / "edgetl.json").read_text())
    assert data["stages"], "the fixture records stages"
    for name, raw in data["stages"].items():
        record = StageRecord.from_dict(raw)
        assert record.to_dict() == raw, name
        assert isinstance(record.status, Status) and record.status == raw["status"]
        for rel, artifact in raw["artifacts"].items():
            assert record.artifacts[rel].sha256 == artifact["sha256"]
            assert record.artifacts[rel].runtime == artifact.get("runtime")
    assert "history" in StageRecord.from_dict(data["stages"]["finetune"]).extra  # not named, kept


def test_unknown_fields_explicit_nulls_and_unknown_statuses_are_kept():
    raw = {"status": "paused-by-a-newer-edgetl", "options": {}, "metrics": {}, "inputs": {}, "error": None,
           "artifacts": {"m.bin": {"bytes": 3, "sha256": "ab", "device": None, "quantizer": {"x": 1}}}}
    record = StageRecord.from_dict(raw)
    assert record.status == "paused-by-a-newer-edgetl" and not isinstance(record.status, Status)
    assert record.artifacts["m.bin"].device is None and record.artifacts["m.bin"].extra["quantizer"] == {"x": 1}
    assert record.to_dict() == raw


def test_writers_are_checked_by_field_name(tmp_path: Path):
    manifest = _manifest(tmp_path)
    (manifest.run_dir / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(TypeError, match="no writable field runtim$"):
        with stage(manifest, "onnx", {}) as st:
            st.artifact(manifest.run_dir / "model.onnx", runtim="onnxruntime")  # the typo is caught at once
    with pytest.raises(TypeError, match="no writable field sha256"):
        ArtifactRecord.describing(sha256="forged")  # digests come from the file, never from the writer
    with stage(manifest, "onnx", {}) as st:
        st.artifact(manifest.run_dir / "model.onnx", runtime="onnxruntime", precision="fp32", format="onnx")
    record = Manifest.load(manifest.run_dir).record("onnx")
    assert record.complete and set(record.models()) == {"model.onnx"}
    artifact = record.artifacts["model.onnx"]
    assert (artifact.bytes, artifact.runtime, artifact.format) == (4, "onnxruntime", "onnx")
    assert artifact.digest() == Manifest.load(manifest.run_dir).recorded_sha256("model.onnx")


def test_folder_artifacts_give_each_member_its_digest(tmp_path: Path):
    manifest = _manifest(tmp_path)
    folder = manifest.run_dir / "ir"
    folder.mkdir()
    (folder / "model.xml").write_text("<xml/>")
    (folder / "model.bin").write_bytes(b"\0" * 8)
    with stage(manifest, "onnx", {}) as st:
        st.artifact(folder, runtime="openvino")
    found = Manifest.load(manifest.run_dir).producer("ir/model.bin")
    assert found is not None and found[0] == "onnx" and found[2] == "model.bin"
    assert found[1].digest("model.bin") == found[1].files["model.bin"] and found[1].sha256 is None
    assert found[1].bytes == 14 and found[1].digest("absent") is None


def test_record_is_a_copy_and_stage_is_the_live_json(tmp_path: Path):
    manifest = _manifest(tmp_path)
    with stage(manifest, "onnx", {"opset": 18}):
        pass
    manifest.record("onnx").options["opset"] = 7
    assert manifest.stage("onnx")["options"]["opset"] == 18 and manifest.record("absent") is None
