"""edgetl tune: space validation, trials as child runs, pruning, crashes, resume, workers, best.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgetl.errors import ConfigError, TargetError
from edgetl.tune import TuneConfig, load_space, parse_space

optuna = pytest.importorskip("optuna")

TINY = {"model": "mobilenet_v3_small", "pretrained": False, "image_size": 32, "workers": 0, "batch_size": 8,
        "patience": None, "threads": 1}


def _space(tmp_path: Path, **searched) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**TINY, "epochs": 2, **searched}))
    return str(path)


def _config(tmp_path: Path, data: Path, **kw) -> TuneConfig:
    space = kw.pop("space", None) or _space(tmp_path, lr={"low": 1e-3, "high": 1e-2, "log": True})
    return TuneConfig(data=str(data), output=str(tmp_path / "study"), space=space, seed=0, **kw)


@pytest.mark.parametrize("space, words", [
    ({"lrr": {"low": 1e-3, "high": 1e-2}}, ["unknown fine-tuning option 'lrr'", "lr"]),
    ({"lr": {"low": 1e-2, "high": 1e-3}}, ["lr", "impossible range"]),
    ({"label_smoothing": {"low": 0.0, "high": 1.5}}, ["label_smoothing", "[0, 1)"]),
    ({"strategy": {"choices": ["full", "sideways"]}}, ["strategy", "sideways"]),
    ({"epochs": {"low": 1.5, "high": 3}}, ["epochs", "integer"]),
    ({"lr": {"low": 0, "high": 1, "log": True}}, ["lr", "log"]),
    ({"lr": {"lo": 1, "high": 2}}, ["lr", "'lo'"]),
    ({"output": "x"}, ["output"]),
    ({"workers": {"choices": [0, 1]}}, ["workers", "cannot be searched"]),
])
def test_space_errors_name_the_key(space, words):
    with pytest.raises(ConfigError, match=re.escape(words[0])) as err:
        parse_space(space)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_default_space_and_yaml(tmp_path):
    default = load_space(None)
    assert {p.name for p in default.params} >= {"strategy", "lr", "weight_decay", "batch_size", "epochs",
                                                 "augment_strength"}
    path = tmp_path / "s.yaml"
    path.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nmodel: {choices: [a, b]}\nimage_size: 64\n")
    space = load_space(path)
    assert space.fixed == {"image_size": 64} and [p.name for p in space.params] == ["lr", "model"]
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "missing.yaml")


def test_tune_config_errors():
    with pytest.raises(ConfigError, match="trials"):
        TuneConfig(data=".", trials=0)
    with pytest.raises(ConfigError, match="sampler"):
        TuneConfig(data=".", sampler="bayes")


def test_unreachable_storage_is_one_line(tmp_path, split_folder):
    from edgetl.tune import tune

    config = _config(tmp_path, split_folder, trials=1, storage="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match="cannot open the study storage") as err:
        tune(config, progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_trials_are_child_runs_and_best_yaml_loads(tmp_path, split_folder):
    from edgetl.config import load_config_file
    from edgetl.finetune import FinetuneConfig
    from edgetl.run import Manifest
    from edgetl.tune import tune

    result = tune(_config(tmp_path, split_folder, trials=2), progress=False)
    assert [r["state"] for r in result.trials] == ["complete", "complete"]
    for row in result.trials:
        run = Path(row["run"])
        assert run == tmp_path / "study" / "trials" / f"trial-{row['number']:03d}"
        parent = Manifest.load(run).parent
        assert parent["stage"] == "tune" and parent["trial"] == row["number"]
        assert Manifest.load(run).completed("finetune")
        assert row["values"] == [Manifest.load(run).stage("finetune")["metrics"]["top1"]]  # the run's own top-1
    # best is a trial with the highest top-1 (which one of a tie is not promised), with its parameters
    assert result.best in result.trials and result.best["values"][0] == max(r["values"][0] for r in result.trials)
    options = load_config_file(result.best_config)
    config = FinetuneConfig(**options)  # every key is a fine-tuning option
    assert config.lr == pytest.approx(result.best["params"]["lr"]) and config.model == "mobilenet_v3_small"
    assert (tmp_path / "study" / "report.html").read_text().count("<svg") >= 1
    assert (tmp_path / "study" / "study.db").is_file()


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


@pytest.mark.slow
def test_pruned_trial_recorded(tmp_path, split_folder):
    from edgetl.run import Manifest
    from edgetl.tune import tune

    config = _config(tmp_path, split_folder, trials=1, space=_space(tmp_path, epochs=3))
    result = tune(config, pruner=_AlwaysPrune(), progress=False)
    (row,) = result.trials
    assert row["state"] == "pruned"
    manifest = Manifest.load(row["run"])
    assert manifest.stage("finetune")["metrics"]["epochs_run"] == 1  # stopped at the first epoch end
    assert manifest.parent["pruned_at_epoch"] == 1
    assert result.best is None and result.best_config is None


@pytest.mark.slow
def test_crashing_trial_fails_and_study_goes_on(tmp_path, split_folder):
    from edgetl.tune import tune

    space = _space(tmp_path, model={"choices": ["mobilenet_v3_small", "no_such_backbone"]})
    result = tune(_config(tmp_path, split_folder, trials=2, sampler="grid", space=space), progress=False)
    states = {r["params"]["model"]: r for r in result.trials}
    assert states["no_such_backbone"]["state"] == "fail" and states["no_such_backbone"]["error"]
    assert states["mobilenet_v3_small"]["state"] == "complete"


@pytest.mark.slow
def test_resume_counts_finished_trials_and_fails_stale(tmp_path, split_folder):
    from optuna.trial import TrialState

    from edgetl.tune import tune
    from edgetl.tune.storage import load_study, storage_url

    config = _config(tmp_path, split_folder, trials=1)
    tune(config, progress=False)
    # a process killed mid-trial leaves a RUNNING trial behind
    study = load_study(config, storage_url(config), sampler=None, pruner=None)
    ghost = study.ask()
    ghost.set_user_attr("host", __import__("socket").gethostname())
    ghost.set_user_attr("pid", 2 ** 22 + 12345)  # no such process
    result = tune(_config(tmp_path, split_folder, trials=2), progress=False)
    states = [r["state"] for r in result.trials]
    assert states.count("complete") == 2 and len(states) == 3
    assert result.trials[ghost.number]["stale"] and result.trials[ghost.number]["state"] == TrialState.FAIL.name.lower()
    # the resumed study does not replay the seed's first configuration
    lrs = [r["params"]["lr"] for r in result.trials if r["state"] == "complete"]
    assert len(set(lrs)) == 2, lrs


@pytest.mark.slow
def test_two_workers_on_a_journal_give_exact_total(tmp_path, split_folder):
    from edgetl.tune import tune

    result = tune(_config(tmp_path, split_folder, trials=3, workers=2, sampler="random"), progress=False)
    assert result.storage.startswith("journal:")
    numbers = [r["number"] for r in result.trials]
    assert sorted(numbers) == [0, 1, 2]
    assert all(r["state"] == "complete" for r in result.trials)
    assert len({r["run"] for r in result.trials}) == 3
    assert len({r["params"]["lr"] for r in result.trials}) == 3  # workers draw different configurations


def test_cli_bad_space_one_line(tmp_path, split_folder):
    from click.testing import CliRunner

    from edgetl.cli import cli

    space = tmp_path / "bad.yaml"
    space.write_text("lr: {low: 1, high: 0.1}\n")
    out = CliRunner().invoke(cli, ["tune", str(split_folder), "--space", str(space), "-o", str(tmp_path / "s")])
    assert out.exit_code == 1 and "impossible range" in out.output


@pytest.mark.slow
def test_linear_probe_trials_share_scan_and_features(tmp_path, split_folder):
    from edgetl.tune import tune

    space = _space(tmp_path, strategy="linear-probe", lr={"low": 1e-3, "high": 1e-1, "log": True})
    result = tune(_config(tmp_path, split_folder, trials=3, space=space), progress=False)
    shared = [r["shared"] for r in sorted(result.trials, key=lambda r: r["number"])]
    assert shared[0] == [] and all(set(s) == {"splits", "features"} for s in shared[1:]), shared
    assert len(list((tmp_path / "study" / "cache").glob("features-*.pt"))) == 2  # train and val, once
    # a resumed study (a new process would start with an empty memory) reads the features from disk
    again = tune(_config(tmp_path, split_folder, trials=4, space=space), progress=False)
    assert "features" in again.trials[3]["shared"]


@pytest.mark.slow
def test_accuracy_and_latency_objective(tmp_path, split_folder):
    from edgetl.bench import load_report
    from edgetl.run import Manifest
    from edgetl.tune import tune

    result = tune(_config(tmp_path, split_folder, trials=2, objective="top1+latency"), progress=False)
    assert any("cannot prune multi-objective" in w for w in result.warnings)
    assert [r["state"] for r in result.trials] == ["complete", "complete"]
    for row in result.trials:
        run = Path(row["run"])
        top1, latency = row["values"]
        assert top1 == Manifest.load(run).stage("finetune")["metrics"]["top1"]
        # the latency is bench's batch-1 p50 of the exported float model under onnxruntime
        (bench,) = load_report(run / "bench" / "report.json")["results"]
        assert bench["runtime"] == "onnxruntime" and Path(bench["artifact"]) == run / "onnx" / "model.onnx"
        assert latency == round(bench["latency"][0]["p50_stable_ms"], 3) > 0
    assert result.best is not None and result.best_config is not None
    assert "Accuracy and latency" in (tmp_path / "study" / "report.html").read_text()


def test_latency_target_checked_before_any_trial(tmp_path, split_folder):
    import importlib.util

    from edgetl.tune import tune

    with pytest.raises(ConfigError, match="top1\\+latency"):
        _config(tmp_path, split_folder, latency_target="intel-cpu")
    with pytest.raises(TargetError, match="no-such-board"):
        tune(_config(tmp_path, split_folder, objective="top1+latency", latency_target="no-such-board"),
             progress=False)
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ConfigError, match="tensorrt, which is not installed here") as err:
            tune(_config(tmp_path, split_folder, objective="top1+latency", latency_target="jetson"), progress=False)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "study" / "trials").exists()


@pytest.mark.slow
def test_latency_on_a_target_is_timed_by_its_runtime(tmp_path, split_folder):
    pytest.importorskip("openvino")
    from edgetl.bench import load_report
    from edgetl.tune import tune

    config = _config(tmp_path, split_folder, trials=1, objective="top1+latency", latency_target="intel-cpu")
    (row,) = tune(config, progress=False).trials
    assert row["state"] == "complete" and row["values"][1] > 0
    run = Path(row["run"])
    assert (run / "intel-cpu" / "int8" / "model.xml").is_file()  # built as edgetl export --target builds it
    (result,) = load_report(run / "bench" / "report.json")["results"]
    assert result["runtime"] == "openvino"
    assert row["values"][1] == round(result["latency"][0]["p50_stable_ms"], 3)


def test_killed_but_unreaped_or_reused_pid_is_stale(monkeypatch):
    """A trial whose process was killed but not yet reaped (a zombie: SIGKILL from `timeout`), or whose
    pid now belongs to another process, is stale; a live process that claimed its trial is not. A reused pid
    is told by the process's start, compared exactly: even a process started at once after the trial (a
    start-time comparison to a second, with psutil's boot time truncated to whole seconds, missed it)."""
    import os
    import subprocess
    import time

    from edgetl.tune.storage import claim, fail_stale_trials

    def claim_as(trial, pid):  # claim() as process pid would (it records its own)
        with monkeypatch.context() as patch:
            patch.setattr(os, "getpid", lambda: pid)
            claim(trial)

    study = optuna.create_study()
    zombie, gone, younger = subprocess.Popen(["true"]), subprocess.Popen(["true"]), None
    time.sleep(0.5)  # both exited, not waited for: zombies
    try:
        trials = [study.ask() for _ in range(3)]
        claim_as(trials[0], zombie.pid)
        claim_as(trials[1], gone.pid)
        gone.wait()  # reaped: its pid is free
        younger = subprocess.Popen(["sleep", "30"])
        trials[1].set_user_attr("pid", younger.pid)  # as if the kernel had given gone's pid to the next process
        claim_as(trials[2], os.getppid())  # alive, and the process that claimed it
        assert sorted(fail_stale_trials(study)) == [0, 1]
    finally:
        zombie.wait()
        if younger is not None:
            younger.kill()
            younger.wait()
