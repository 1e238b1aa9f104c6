"""TrainSettings: what the loop is told, read back from a recorded finetune stage, and what a resume may change."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from edgetl.errors import ConfigError
from edgetl.finetune import FinetuneConfig
from edgetl.train.settings import TrainSettings, recorded_settings, resumable_part, resumed_options


def test_a_finetune_config_gives_the_settings_it_records():
    config = FinetuneConfig(data="/d", strategy="linear-probe", epochs=4, batch_size=6, patience=None, ema=0.9,
                            pretrained=False, seed=3, workers=0, threads=2)
    settings = config.train_settings()
    assert (settings.epochs, settings.batch_size, settings.lr, settings.strategy) == (4, 6, 3e-3, "linear-probe")
    assert (settings.patience, settings.ema, settings.seed, settings.workers, settings.threads) == (None, 0.9, 3, 0, 2)
    assert settings.freeze_bn is False and settings.cached  # random init: BatchNorm re-estimated; cached probe
    assert settings.checkpoints and not settings.start_is_candidate
    assert recorded_settings(config.to_dict()) == settings  # the record reads back as the same training


@pytest.mark.parametrize("options, lr, freeze_bn", [
    ({"strategy": "full", "pretrained": True}, 1e-3, True),
    ({"strategy": "linear-probe", "pretrained": False, "weights": "w.pt"}, 3e-3, True),
    ({"strategy": "gradual", "pretrained": False, "lr": 0.05, "freeze_bn": False}, 0.05, False),
    ({"strategy": "full", "pretrained": True, "freeze_bn": False}, 1e-3, False),
])
def test_recorded_defaults_resolve_lr_and_batchnorm(options, lr, freeze_bn):
    settings = recorded_settings({"epochs": 2, "batch_size": 4, **options})
    assert (settings.lr, settings.freeze_bn) == (lr, freeze_bn)
    # an option an older edgetl did not record takes the default
    assert settings.augment_strength == 1.0 and settings.ema is None


def test_settings_no_record_holds_are_given_apart():
    settings = recorded_settings({"epochs": 2, "batch_size": 4, "patience": 3}, start_is_candidate=True,
                                 checkpoints=False)
    assert settings.start_is_candidate and not settings.checkpoints and settings.patience == 3


@pytest.mark.parametrize("bad, match", [({"epochs": 0}, "epochs must be at least 1, got 0"),
                                        ({"batch_size": 0}, "batch_size must be at least 1"),
                                        ({"lr": -1.0}, "lr must be positive"), ({"patience": 0}, "patience must be")])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainSettings(**{"epochs": 1, "batch_size": 2, "lr": 0.1, **bad})


def test_a_resume_changes_only_the_resumable_options(tmp_path: Path):
    recorded = FinetuneConfig(data=str(tmp_path), epochs=3, workers=1).to_dict()
    options = resumed_options(recorded, {"epochs": 5, "workers": 0, "data": f"{tmp_path}/."}, tmp_path)
    assert options == {**recorded, "epochs": 5, "workers": 0}  # the same data folder, spelt otherwise, is no change
    assert resumable_part(options) == {"epochs": 5, "patience": 5, "workers": 0, "threads": None,
                                       "save_every_epoch": False}
    with pytest.raises(ConfigError, match=r"--batch-size cannot change when resuming .*batch_size=32.*--epochs"):
        resumed_options(recorded, {"batch_size": 8}, tmp_path)
    with pytest.raises(ConfigError, match="unknown fine-tuning option 'colour'"):
        resumed_options(recorded, {"colour": 1}, tmp_path)
    assert resumed_options(recorded, {"batch_size": 32}, tmp_path) == recorded  # repeating a value is fine


def test_a_worker_job_travels_whole_to_a_spawned_process(tmp_path: Path):
    from edgetl.finetune import JobKind, WorkerJob

    job = WorkerJob(JobKind.NEW, str(tmp_path), False, options=FinetuneConfig(data="/d", nproc=2, batch_size=8).to_dict(),
                    overwrite=True)
    again = pickle.loads(pickle.dumps(job))
    assert again == job and again.kind is JobKind.NEW and again.options["nproc"] == 2


def test_the_main_process_is_rank_0_or_a_lone_one(monkeypatch):
    from edgetl.train import distributed

    monkeypatch.delenv("RANK", raising=False)
    assert distributed.is_main()
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main()
