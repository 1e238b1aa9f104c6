"""Multi-process fine-tuning (DistributedDataParallel under torch's elastic launcher): one coherent run folder,
val metrics of the saved weights, resume with the same processes, a killed worker, and refused bad input."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.errors import ConfigError
from edgetl.finetune import FinetuneConfig, finetune, resume
from edgetl.manifest import Manifest
from edgetl.train import distributed


def config(data: Path, out: Path, **overrides) -> FinetuneConfig:
    base = dict(data=str(data), output=str(out), model="mobilenet_v3_small", pretrained=False, image_size=32,
                epochs=2, batch_size=8, workers=0, patience=None, nproc=2)
    base.update(overrides)
    return FinetuneConfig(**base)


def evaluate_checkpoint(run: Path) -> tuple[float, list[list[int]]]:
    """Val top-1 and confusion matrix of ``run``'s checkpoint, in this one process (torch runner, PIL)."""
    from edgetl.backends import create_runner
    from edgetl.data import load_array, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec

    manifest = Manifest.load(run)
    images, labels = load_array(run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    predictions = create_runner("torch", run / "checkpoint.pt").infer(images).argmax(1)
    n = len(manifest.classes)
    matrix = [[int(np.sum((labels == t) & (predictions == p))) for p in range(n)] for t in range(n)]
    return float(np.mean(predictions == labels)), matrix


class KillRankOne:
    """A callback that SIGKILLs rank 1 at the end of epoch ``at`` (a worker lost mid-run)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer, record) -> None:
        if trainer.dist.rank == 1 and record["epoch"] == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class KillRankOneInFirstEpoch:
    """Unpickled in each worker, it makes rank 1 SIGKILL itself as its first epoch starts (callbacks only run
    at epoch ends, and a test's monkeypatch does not reach spawned workers)."""

    def __init__(self) -> None:
        self.armed = True  # some state, or unpickling skips __setstate__

    def on_epoch_end(self, trainer, record) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        from edgetl.train.trainer import Trainer

        original = Trainer._train_epoch

        def dies(trainer, progress, task):
            if trainer.dist.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(trainer, progress, task)

        Trainer._train_epoch = dies


# -- bad input, refused before anything is written ------------------------------------------------

def test_nproc_above_the_cores_is_refused_before_anything_is_written(split_folder: Path, tmp_path: Path,
                                                                      monkeypatch):
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    with pytest.raises(ConfigError, match="--nproc 3 is more than the 2 usable CPU core"):
        finetune(config(split_folder, tmp_path / "run", nproc=3, batch_size=9), progress=False)
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == [split_folder]


def test_nproc_above_the_cores_is_refused_for_the_cores_not_the_batch(split_folder: Path, tmp_path: Path, monkeypatch):
    """`--nproc 99` used to ask first for a batch multiple of 99, then refuse the cores."""
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    with pytest.raises(ConfigError, match="^--nproc 99 is more than the 2 usable CPU core"):
        finetune(config(split_folder, tmp_path / "run", nproc=99, batch_size=8), progress=False)
    assert list(tmp_path.iterdir()) == [split_folder]


def test_global_batch_must_split_over_the_processes(monkeypatch):
    monkeypatch.setattr(distributed, "usable_cores", lambda: 4)  # the verdict must not depend on this machine
    with pytest.raises(ConfigError, match="does not split evenly over 2 processes"):
        FinetuneConfig(data="x", batch_size=7, nproc=2)
    with pytest.raises(ConfigError, match="nproc must be at least 1"):
        FinetuneConfig(data="x", nproc=0)


def test_sync_bn_is_refused_on_the_cpu(split_folder: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="--sync-bn needs GPUs"):
        finetune(config(split_folder, tmp_path / "run", sync_bn=True), progress=False)
    assert not (tmp_path / "run").exists()


# -- the pieces, in one process ----------------------------------------------------------------------

def test_distributed_sampler_shards_and_reshuffles_each_epoch():
    from edgetl.data import make_loader

    samples = [(Path(f"{i}.png"), 0) for i in range(20)]
    orders = {}
    for rank in (0, 1):
        loader = make_loader(samples, None, 4, shuffle=True, seed=3, shard=(rank, 2))
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            orders[rank, epoch] = list(loader.sampler)
    assert sorted(orders[0, 0] + orders[1, 0]) == list(range(20))  # disjoint shards covering the epoch
    assert orders[0, 0] != orders[0, 1] and orders[1, 0] != orders[1, 1]  # set_epoch reshuffles
    again = make_loader(samples, None, 4, shuffle=True, seed=3, shard=(0, 2))
    again.sampler.set_epoch(1)
    assert list(again.sampler) == orders[0, 1]  # order = f(seed, epoch): a resumed rank sees the same
    # each rank's loader workers are seeded apart (augmentations differ), the epoch order is shared
    seeds = [make_loader(samples, None, 4, shuffle=True, seed=3, shard=(r, 2)).generator.initial_seed() for r in (0, 1)]
    assert seeds[0] != seeds[1] and seeds[0] == make_loader(samples, None, 4, shuffle=True, seed=3).generator.initial_seed()


def test_gather_puts_the_shards_back_in_order(monkeypatch):
    data = torch.arange(11).reshape(11, 1)
    shards = [distributed.Dist(r, 3).shard(list(data)) for r in range(3)]
    parts = [torch.stack(s) for s in shards]
    monkeypatch.setattr(distributed.Dist, "all_gather_object", lambda self, obj: parts)
    assert torch.equal(distributed.Dist(0, 3).gather(parts[0]), data)
    one = distributed.Dist()
    assert one.shard([1, 2]) == [1, 2] and one.sum(1.0, 2.0) == [1.0, 2.0] and one.broadcast("x") == "x"


# -- real 2-process runs -----------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_write_one_coherent_run_that_resumes_with_two(split_folder: Path, tmp_path: Path):
    result = finetune(config(split_folder, tmp_path / "run", strategy="full", model="efficientnet_lite0",
                             pretrained=True), progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "split"]  # no staging or second folder left
    manifest = Manifest.load(run)
    stage = manifest.require("finetune", "")
    assert stage["options"]["nproc"] == 2 and len(stage["history"]) == 2 and manifest.verify() == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]
    # rank 0's weights evaluated by one plain process give the metrics the 2-process job recorded
    top1, matrix = evaluate_checkpoint(run)
    assert result.metrics["top1"] == top1 == stage["metrics"]["top1"] and result.metrics["confusion_matrix"] == matrix
    assert result.metrics["samples"] == 8 and result.history[1]["val_loss"] < result.history[0]["val_loss"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2  # each rank's RNG, for resume
    resumed = resume(run, epochs=3, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert Manifest.load(run).completed("finetune")
    assert len(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["rng_ranks"]) == 2


@pytest.mark.slow
def test_killed_worker_stops_the_job_and_the_run_resumes(split_folder: Path, tmp_path: Path):
    cfg = config(split_folder, tmp_path / "run", epochs=3)
    with pytest.raises(distributed.WorkerFailedError, match="worker rank 1 was killed by SIGKILL.*--resume"):
        finetune(cfg, progress=False, callbacks=[KillRankOne(at=2)])
    stage = Manifest.load(tmp_path / "run").stage("finetune")
    assert stage["status"] == "failed"  # never claims success
    assert stage["error"].startswith("worker rank 1 was killed by SIGKILL")  # not rank 0's "Connection reset"
    result = resume(tmp_path / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


@pytest.mark.slow
def test_killed_worker_in_the_first_epoch_leaves_nothing(split_folder: Path, tmp_path: Path):
    with pytest.raises(distributed.WorkerFailedError, match="worker rank 1 was killed"):
        finetune(config(split_folder, tmp_path / "run"), progress=False, callbacks=[KillRankOneInFirstEpoch()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


@pytest.mark.slow
def test_linear_probe_cache_shared_by_two_processes_matches_one(split_folder: Path, tmp_path: Path):
    """Each rank computes half the features and they are gathered: the head trains on the same features as in
    one process, so the run ends with the same weights (to float rounding) and val loss, not just the same top-1
    on 8 images (which saturates)."""
    common = dict(strategy="linear-probe", model="efficientnet_lite0", pretrained=True)
    two = finetune(config(split_folder, tmp_path / "two", **common), progress=False)
    one = finetune(config(split_folder, tmp_path / "one", nproc=1, **common), progress=False)
    weights = [torch.load(r.run_dir / "checkpoint.pt", weights_only=True)["state_dict"] for r in (two, one)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-6, rtol=0, msg=key)
    assert [h["val_loss"] for h in two.history] == pytest.approx([h["val_loss"] for h in one.history], abs=2e-5)
    assert two.metrics["top1"] == one.metrics["top1"] and two.metrics["confusion_matrix"] == one.metrics["confusion_matrix"]



def test_fewer_val_images_than_processes_is_one_line(tmp_path: Path, monkeypatch):
    from edgetl.data import DatasetSplits
    from edgetl.errors import DatasetError
    from edgetl.models import build_model
    from edgetl.train.trainer import Trainer

    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(0, 3))
    splits = DatasetSplits(["a", "b"], [(Path(f"{i}.png"), i % 2) for i in range(6)],
                           [(Path("v0.png"), 0), (Path("v1.png"), 1)], "folder", [])
    bundle = build_model("mobilenet_v3_small", 2, pretrained=False, image_size=32)
    with pytest.raises(DatasetError, match="2 val image\\(s\\) cannot be shared by 3 processes") as err:
        Trainer(config(tmp_path, tmp_path / "run", nproc=1, batch_size=6).train_settings(), bundle, splits)
    assert "\n" not in str(err.value)


def test_a_worker_error_of_any_edgetl_class_keeps_its_one_line_message():
    from types import SimpleNamespace

    for cls in ("TargetError", "MissingBackendError", "ConfigError"):
        failure = SimpleNamespace(exitcode=1, message={"message": f"Traceback (most recent call last):\n{cls}: bad x"})
        assert distributed.describe_failure(SimpleNamespace(failures={1: failure})) == \
            "worker rank 1 exited with code 1: bad x"
    failure = SimpleNamespace(exitcode=1, message={"message": "ValueError: bad x"})  # a bug keeps its type
    assert distributed.describe_failure(SimpleNamespace(failures={0: failure})).endswith("ValueError: bad x")
