"""A training as a run's finetune stage: what it records when new, failed or resumed, and its stage lock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgetl.errors import RunBusyError, RunFolderError
from edgetl.run.lock import StageLock
from edgetl.run.manifest import Manifest
from edgetl.train.stage import check_resumable, train_stage
from edgetl.train.trainer import FinetuneResult

FILES = ("checkpoint.pt", "metrics.json", "confusion_matrix.png")


class FakeTrainer:
    """Writes the run files a trainer writes, or raises ``fail`` mid-training."""

    def __init__(self, run_dir: Path, fail: BaseException | None = None) -> None:
        self.run_dir, self.fail, self.fresh = run_dir, fail, None

    def run(self, fresh: bool) -> FinetuneResult:
        self.fresh = fresh
        if self.fail is not None:
            raise self.fail
        for name in FILES:
            (self.run_dir / name).write_text(f"{name} {fresh}")
        return FinetuneResult(self.run_dir, {"top1": 0.75}, [{"epoch": 1, "val_top1": 0.75}], 1.0)


def new_run(run: Path) -> Manifest:
    manifest = Manifest.create(run, model={"name": "m"}, classes=["a", "b"], preprocessing={})
    manifest.save()
    (run / "split.json").write_text("{}")
    return manifest


def test_a_new_training_records_its_files_history_and_options(tmp_path: Path):
    manifest = new_run(tmp_path / "run")
    result = train_stage(FakeTrainer(tmp_path / "run"), manifest, {"epochs": 1, "lr": 0.1})
    record = Manifest.load(tmp_path / "run").stage("finetune")
    assert record["status"] == "complete" and record["options"] == {"epochs": 1, "lr": 0.1}
    assert list(record["artifacts"]) == ["split.json", *FILES]
    assert {k: record["artifacts"]["checkpoint.pt"][k] for k in ("runtime", "precision", "format")} == {
        "runtime": "torch", "precision": "fp32", "format": "pytorch"}
    assert record["history"] == result.history and record["metrics"] == {"top1": 0.75}
    assert Manifest.load(tmp_path / "run").verify() == []


def test_a_stopped_training_keeps_its_split_and_resumes_with_its_record(tmp_path: Path, caplog):
    run = tmp_path / "run"
    manifest = new_run(run)
    with caplog.at_level(logging.ERROR), pytest.raises(KeyboardInterrupt):
        train_stage(FakeTrainer(run, KeyboardInterrupt()), manifest, {"epochs": 2, "lr": 0.1})
    record = Manifest.load(run).stage("finetune")
    assert record["status"] == "interrupted" and record["error"].startswith("KeyboardInterrupt")
    assert list(record["artifacts"]) == ["split.json"]  # recorded at once: the split the run trains on is proven
    assert f"fine-tuning interrupted; resume with: edgetl finetune --resume {run}" in caplog.text
    trainer = FakeTrainer(run)
    train_stage(trainer, Manifest.load(run), {"epochs": 3}, resume=True)
    record = Manifest.load(run).stage("finetune")
    assert trainer.fresh is False and record["status"] == "complete" and "error" not in record
    assert record["options"] == {"epochs": 3, "lr": 0.1} and "resumed" in record
    assert list(record["artifacts"]) == ["split.json", *FILES]


def test_a_failure_in_an_unpromoted_staging_folder_does_not_say_resume(tmp_path: Path, caplog):
    class Staging:
        promoted = False

    manifest = new_run(tmp_path / "run")
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="out of memory"):
        train_stage(FakeTrainer(tmp_path / "run", RuntimeError("out of memory")), manifest, {}, staging=Staging())
    assert "resume with" not in caplog.text
    assert Manifest.load(tmp_path / "run").stage("finetune")["status"] == "failed"


def test_the_stage_lock_is_taken_unless_the_caller_holds_it(tmp_path: Path):
    run = tmp_path / "run"
    manifest = new_run(run)
    with StageLock(run, "finetune") as held:
        with pytest.raises(RunBusyError, match="being written by another edgetl process"):
            train_stage(FakeTrainer(run), manifest, {})
        train_stage(FakeTrainer(run), manifest, {}, lock=held)
        assert held.held  # the caller's lock: still held, released by the caller
    assert not held.held and Manifest.load(run).completed("finetune")


def test_what_cannot_resume_is_refused_in_one_line(tmp_path: Path):
    with pytest.raises(RunFolderError, match="already finished fine-tuning; pass --epochs N"):
        check_resumable(tmp_path, {"status": "complete"}, {})
    with pytest.raises(RunFolderError, match="no checkpoints/last.pt .*start it again with --overwrite"):
        check_resumable(tmp_path, {"status": "complete"}, {"epochs": 4})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    check_resumable(tmp_path, {"status": "failed"}, {})
