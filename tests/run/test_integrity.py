"""Recorded sha256s checked before use, staleness of derived stages, and `edgetl status`."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl.errors import IntegrityError, RunBusyError, RunFolderError, StaleArtifactError
from edgetl.run import Manifest, require_current, run_status, stale_reason, stage, verified_file
from edgetl.run.lock import StageLock


def build_chain(tmp_path: Path) -> Manifest:
    """finetune -> checkpoint.pt -> onnx -> model.onnx -> target:int8 (as the real stages record them)."""
    manifest = Manifest.create(tmp_path / "run", model={"name": "m"}, classes=["a", "b"], preprocessing={})
    run = manifest.run_dir
    with stage(manifest, "finetune", {}) as st:
        (run / "checkpoint.pt").write_bytes(b"v1")
        st.artifact(run / "checkpoint.pt")
    with stage(manifest, "onnx", {}, ["checkpoint.pt"]) as st:
        (run / "model.onnx").write_bytes(b"onnx from v1")
        st.artifact(run / "model.onnx")
    with stage(manifest, "target:int8", {}, ["model.onnx", "checkpoint.pt"]) as st:
        (run / "ir").mkdir()
        (run / "ir" / "model.xml").write_text("<xml/>")
        (run / "ir" / "model.bin").write_bytes(b"bin")
        st.artifact(run / "ir")
    return manifest


def test_a_changed_file_is_refused_with_what_to_rerun(tmp_path: Path):
    manifest = build_chain(tmp_path)
    assert verified_file(manifest, "ir/model.bin")[0].read_bytes() == b"bin"
    (manifest.run_dir / "ir" / "model.bin").write_bytes(b"BIN")
    with pytest.raises(IntegrityError, match="edgetl export .* --target target --precision int8"):
        verified_file(manifest, "ir/model.bin")
    assert verified_file(manifest, "ir/model.bin", verify=False)[0].is_file()  # the explicit opt-out
    (manifest.run_dir / "model.onnx").unlink()
    with pytest.raises(RunFolderError, match="missing: edgetl export"):
        verified_file(manifest, "model.onnx")


def test_rewriting_the_checkpoint_makes_everything_built_from_it_stale(tmp_path: Path):
    manifest = build_chain(tmp_path)
    assert [stale_reason(manifest, s) for s in manifest.stages] == [None, None, None]
    with stage(manifest, "finetune", {}) as st:  # a resumed fine-tune writes a better checkpoint
        (manifest.run_dir / "checkpoint.pt").write_bytes(b"v2")
        st.artifact(manifest.run_dir / "checkpoint.pt")
    assert "checkpoint.pt was rewritten by 'finetune'" in stale_reason(manifest, "onnx")
    assert stale_reason(manifest, "target:int8") is not None
    with pytest.raises(StaleArtifactError, match="re-run `edgetl export"):
        require_current(manifest, "onnx")
    states = {s.stage: s.state for s in run_status(manifest.run_dir)}
    assert states == {"finetune": "current", "onnx": "stale", "target:int8": "stale"}


def test_status_names_modified_missing_and_busy_stages(tmp_path: Path):
    manifest = build_chain(tmp_path)
    (manifest.run_dir / "model.onnx").write_bytes(b"edited")
    (manifest.run_dir / "ir" / "model.xml").unlink()
    with StageLock(manifest.run_dir, "finetune"):
        states = {s.stage: (s.state, s.files) for s in run_status(manifest.run_dir)}
    assert states["finetune"][0] == "busy"
    assert states["onnx"] == ("modified", {"model.onnx": "modified"})
    assert states["target:int8"] == ("missing", {"ir/model.xml": "missing"})


def test_a_second_writer_of_a_stage_is_refused(tmp_path: Path):
    manifest = build_chain(tmp_path)
    with stage(manifest, "bench", {}):
        with pytest.raises(RunBusyError, match="stage 'bench' .* another edgetl process"):
            with stage(Manifest.load(manifest.run_dir), "bench", {}):
                pass
    assert Manifest.load(manifest.run_dir).completed("bench")  # the first writer's record survives
