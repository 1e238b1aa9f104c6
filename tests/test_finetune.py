"""Fine-tuning: strategies, checkpoints, resume, interrupted runs, and the manifest they leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgetl.errors import ConfigError, DatasetError, ModelError, RunFolderError
from edgetl.finetune import FinetuneConfig, finetune, layer_groups, resume
from edgetl.manifest import Manifest
from edgetl.train.trainer import Trainer

from conftest import make_image_folder


def config(data: Path, out: Path, **overrides) -> FinetuneConfig:
    base = dict(data=str(data), output=str(out), model="mobilenet_v3_small", pretrained=False, image_size=32,
                epochs=2, batch_size=8, workers=0, patience=None)
    base.update(overrides)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("strategy", ["linear-probe", "full", "gradual"])
def test_strategies_train_and_record(split_folder: Path, tmp_path: Path, strategy: str):
    """Each strategy learns the colour classes (offline ImageNet Lite0 at 32 px: chance is 50 %), and the
    recorded metrics are those of the saved checkpoint on the recorded validation images."""
    import numpy as np

    from edgetl.backends import create_runner
    from edgetl.data import load_array, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec

    cfg = config(split_folder, tmp_path / "run", strategy=strategy, model="efficientnet_lite0", pretrained=True)
    result = finetune(cfg, progress=False)
    run = result.run_dir
    manifest = Manifest.load(run)
    stage = manifest.require("finetune", "")
    assert stage["metrics"]["epochs_run"] == 2 and len(result.history) == 2
    assert manifest.classes == ["cats", "dogs"]
    assert manifest.data["preprocessing"]["input_size"] == 32
    assert set(stage["artifacts"]) == {"checkpoint.pt", "metrics.json", "confusion_matrix.png", "split.json"}
    assert manifest.verify() == []
    assert (run / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_name"] == "edgetl:efficientnet_lite0"
    # it learned: 8 validation images, 4 per class; at least 7 right and every class mostly right
    metrics = result.metrics
    assert metrics["samples"] == 8 and metrics["top1"] >= 7 / 8, metrics
    assert set(metrics["per_class"]) == {"cats", "dogs"} and min(metrics["per_class"].values()) >= 3 / 4
    # recomputed here from the saved checkpoint, through another path (torch runner, PIL preprocessing)
    samples = run_eval_samples(manifest)
    images, labels = load_array(samples, PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    assert sorted(Path(path).parent.name for path, _ in samples) == ["cats"] * 4 + ["dogs"] * 4
    predictions = create_runner("torch", run / "checkpoint.pt").infer(images).argmax(1)
    assert metrics["top1"] == float(np.mean(predictions == labels))
    assert metrics["per_class"] == {name: float(np.mean(predictions[labels == i] == i))
                                    for i, name in enumerate(manifest.classes)}
    expected_matrix = [[int(np.sum((labels == t) & (predictions == p))) for p in range(2)] for t in range(2)]
    assert metrics["confusion_matrix"] == expected_matrix
    assert json.loads((run / "metrics.json").read_text())["final"]["top1"] == metrics["top1"]
    assert stage["metrics"]["top1"] == metrics["top1"]


def test_linear_probe_freezes_backbone(split_folder: Path, tmp_path: Path):
    """Every backbone parameter and BatchNorm buffer is bit for bit as initialised; only the head moved."""
    cfg = config(split_folder, tmp_path / "run", strategy="linear-probe", cache_features=False, epochs=1)
    finetune(cfg, progress=False)
    before = build_initial(cfg)
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert before.keys() == after.keys()
    head = {k for k in before if k.startswith("classifier.3.")}
    assert head == {"classifier.3.weight", "classifier.3.bias"}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == head  # running_mean/var and num_batches_tracked included
    assert any(k.endswith("running_var") for k in before)  # the buffers were compared too


def build_initial(cfg: FinetuneConfig) -> dict:
    from edgetl.models import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, 2, pretrained=False, image_size=32).model.state_dict()


def _group_keys(cfg: FinetuneConfig) -> list[set[str]]:
    """The state-dict keys (parameters and the buffers of their modules) of each layer group, bottom first."""
    from edgetl.models import build_model

    bundle = build_model(cfg.model, 2, pretrained=False, image_size=cfg.image_size)
    names = {id(p): n for n, p in bundle.model.named_parameters()}
    buffers = [n for n, _ in bundle.model.named_buffers()]
    groups = []
    for params in layer_groups(bundle.model, bundle.head):
        keys = {names[id(p)] for p in params}
        modules = {k.rsplit(".", 1)[0] for k in keys}
        groups.append(keys | {b for b in buffers if b.rsplit(".", 1)[0] in modules})
    return groups


def test_gradual_unfreezes_from_the_top(split_folder: Path, tmp_path: Path):
    """Epoch 1 trains the head only, epoch 2 the top half of the layer groups (the bottom half is bit for
    bit unchanged, BatchNorm statistics included), epochs 3-4 everything."""
    cfg = config(split_folder, tmp_path / "run", strategy="gradual", epochs=4, probe_epochs=0, save_every_epoch=True)
    result = finetune(cfg, progress=False)
    groups = _group_keys(cfg)
    n = len(groups)
    assert n > 5
    top_half = -(-n // 2)
    assert [h["unfrozen_groups"] for h in result.history] == [0, top_half, n, n]
    states = [build_initial(cfg)] + [
        torch.load(tmp_path / "run" / "checkpoints" / f"epoch_{e:03d}.pt", weights_only=True)["model"]
        for e in (1, 2, 3)]

    def moved(a: dict, b: dict) -> list[bool]:
        """Per group: did any of its parameters or buffers change between two checkpoints."""
        return [any(not torch.equal(a[k], b[k]) for k in keys) for keys in groups]

    assert moved(states[0], states[1]) == [False] * n
    assert not torch.equal(states[0]["classifier.3.weight"], states[1]["classifier.3.weight"])  # the head trained
    assert moved(states[1], states[2]) == [False] * (n - top_half) + [True] * top_half
    assert moved(states[2], states[3]) == [True] * n


def test_gradual_with_probed_head_starts_unfreezing_at_once(split_folder: Path, tmp_path: Path, monkeypatch):
    """LP-FT: before epoch 1 the probe fits the new head on frozen features (only the head moved, and the
    model then classifies the val images: offline ImageNet Lite0), so epoch 1 already trains the backbone
    (without a probe: the head alone, [0, n])."""
    import numpy as np

    probes = []
    original = Trainer._probe_head

    def probe(self, progress):
        before = {k: v.clone() for k, v in self.model.state_dict().items()}
        accuracy = original(self, progress)
        logits, labels, _ = self._evaluate()
        changed = {k for k, v in self.model.state_dict().items() if not torch.equal(v, before[k])}
        head = {k for k in before if k.rsplit(".", 1)[0] in self.bundle.head}
        probes.append((accuracy, float(np.mean(logits.argmax(1) == labels)), changed, head))
        return accuracy

    monkeypatch.setattr(Trainer, "_probe_head", probe)
    cfg = config(split_folder, tmp_path / "run", strategy="gradual", epochs=2, probe_epochs=3,
                 model="efficientnet_lite0", pretrained=True)
    result = finetune(cfg, progress=False)
    (train_top1, val_top1, changed, head), = probes
    assert changed == head and len(head) == 2  # weight and bias
    assert train_top1 >= 0.9 and val_top1 >= 7 / 8, probes
    n = len(_group_keys(cfg))
    assert n > 5 and [h["unfrozen_groups"] for h in result.history] == [n, n]


def test_layer_groups_exclude_head():
    from edgetl.models import build_model

    bundle = build_model("mobilenet_v3_small", 2, pretrained=False)
    head = {id(p) for p in bundle.model.get_submodule("classifier.3").parameters()}
    groups = layer_groups(bundle.model, bundle.head)
    assert len(groups) > 5 and not head & {id(p) for g in groups for p in g}


def test_pretrained_probe_learns_colour_classes(tmp_path: Path):
    data = make_image_folder(tmp_path / "data", per_class=16)
    cfg = config(data, tmp_path / "run", model="efficientnet_lite0", pretrained=True, strategy="linear-probe",
                 epochs=10, val_fraction=0.25)
    result = finetune(cfg, progress=False)
    assert result.metrics["top1"] >= 0.9


def test_resume_continues_interrupted_run(split_folder: Path, tmp_path: Path, monkeypatch):
    cfg = config(split_folder, tmp_path / "run", epochs=3)
    original = Trainer._train_epoch
    calls = {"n": 0}

    def dies_in_second_epoch(self, progress, task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, progress, task)

    monkeypatch.setattr(Trainer, "_train_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, progress=False)
    manifest = Manifest.load(tmp_path / "run")
    assert manifest.stage("finetune")["status"] == "interrupted"  # never claims success
    assert not manifest.completed("finetune")
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    result = resume(tmp_path / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert Manifest.load(tmp_path / "run").completed("finetune")


def test_resume_of_finished_run_needs_more_epochs(split_folder: Path, tmp_path: Path):
    finetune(config(split_folder, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(RunFolderError, match="already finished"):
        resume(tmp_path / "run", progress=False)
    result = resume(tmp_path / "run", epochs=2, progress=False)
    assert result.metrics["epochs_run"] == 2


def test_failure_before_first_epoch_leaves_no_run_folder(split_folder: Path, tmp_path: Path, monkeypatch):
    def boom(self, progress, task):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Trainer, "_train_epoch", boom)
    with pytest.raises(RuntimeError, match="^out of memory$"):
        finetune(config(split_folder, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_inputs_leave_nothing_behind(tmp_path: Path, split_folder: Path):
    with pytest.raises(DatasetError, match="dataset path does not exist"):
        finetune(config(tmp_path / "missing", tmp_path / "run1"), progress=False)
    with pytest.raises(ModelError, match="Did you mean"):
        finetune(config(split_folder, tmp_path / "run2", model="mobilenet_v3_smal"), progress=False)
    assert not (tmp_path / "run1").exists() and not (tmp_path / "run2").exists()


def test_existing_run_folder_is_not_clobbered(split_folder: Path, tmp_path: Path):
    finetune(config(split_folder, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(RunFolderError, match="already exists"):
        finetune(config(split_folder, tmp_path / "run", epochs=1), progress=False)
    finetune(config(split_folder, tmp_path / "run", epochs=1), overwrite=True, progress=False)


def test_config_validation():
    with pytest.raises(ConfigError, match="'strategy' must be one of linear-probe, full, gradual, got 'sideways'"):
        FinetuneConfig(data="x", strategy="sideways")
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        FinetuneConfig(data="x", epochs=0)
    assert FinetuneConfig(data="/d/flowers", model="resnet50").run_name == "flowers-resnet50"


def test_ema_weights_are_the_ones_evaluated_and_saved(split_folder: Path, tmp_path: Path):
    """With ``ema`` the checkpoint holds the weight average of its epoch, not the raw weights, and the
    recorded val metrics are the checkpoint's."""
    import numpy as np

    from edgetl.backends import create_runner
    from edgetl.data import load_array, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec

    with pytest.raises(ConfigError, match="ema"):
        FinetuneConfig(data="x", ema=1.0)
    result = finetune(config(split_folder, tmp_path / "run", ema=0.9, save_every_epoch=True, epochs=3), progress=False)
    run = result.run_dir
    best = torch.load(run / "checkpoint.pt", weights_only=True)
    state = torch.load(run / "checkpoints" / f"epoch_{best['epoch']:03d}.pt", weights_only=True)
    floats = [name for name, t in state["model"].items() if t.is_floating_point()]
    assert all(torch.equal(best["state_dict"][name], state["ema"][name]) for name in state["ema"])
    assert any(not torch.equal(state["ema"][name], state["model"][name]) for name in floats)
    manifest = Manifest.load(run)
    images, labels = load_array(run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    predictions = create_runner("torch", run / "checkpoint.pt").infer(images).argmax(1)
    assert result.metrics["top1"] == float(np.mean(predictions == labels))


def test_metrics_json_has_history(split_folder: Path, tmp_path: Path):
    finetune(config(split_folder, tmp_path / "run"), progress=False)
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(data["history"]) == 2 and "confusion_matrix" in data["final"]


# -- the run folder as a contract (issue 7) ---------------------------------------------------------------
TRAIN = """
import os, signal, sys
from edgetl.finetune import FinetuneConfig, finetune, resume
from edgetl.train.callbacks import Checkpoints
if sys.argv[1] == "kill":
    original = Checkpoints.save_state
    def die_in_second_epoch(self, trainer):
        if trainer.epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 before epoch 2 is saved: no cleanup at all
        original(self, trainer)
    Checkpoints.save_state = die_in_second_epoch
if sys.argv[1] == "resume":
    resume(sys.argv[2], progress=False)
else:
    finetune(FinetuneConfig(**eval(sys.argv[2])), progress=False)
"""


@pytest.mark.parametrize("strategy,workers,ema", [("full", 0, None), ("full", 1, None), ("linear-probe", 0, None),
                                                  ("full", 0, 0.9)])
def test_kill_9_then_resume_equals_an_uninterrupted_run(split_folder: Path, tmp_path: Path, strategy, workers, ema):
    """Bit for bit: the data order, augmentations and dropout of epochs 2-3 do not depend on the restart.

    Every run is its own process, as from the CLI (forking loader workers inside a test process that has
    loaded OpenVINO's thread pools can crash it)."""
    import signal
    import subprocess
    import sys

    def train(*args: str) -> int:
        proc = subprocess.run([sys.executable, "-c", TRAIN, *args], capture_output=True, text=True)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
        return proc.returncode

    settings = dict(data=str(split_folder), model="mobilenet_v3_small", pretrained=False, image_size=32, epochs=3,
                    batch_size=4, workers=workers, patience=None, strategy=strategy, threads=1, ema=ema)
    assert train("run", repr({**settings, "output": str(tmp_path / "straight")})) == 0
    killed = tmp_path / "killed"
    assert train("kill", repr({**settings, "output": str(killed)})) == -signal.SIGKILL
    assert Manifest.load(killed).stage("finetune")["status"] == "running"  # never claims success
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert train("resume", str(killed)) == 0
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert ("ema" in a) == ("ema" in b) == (ema is not None)
    for name, tensor in a.get("ema", {}).items():  # the weight average resumes where it stopped
        assert torch.equal(tensor, b["ema"][name]), name
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_resume_is_refused_while_the_run_trains(split_folder: Path, tmp_path: Path):
    from edgetl.errors import RunBusyError
    from edgetl.run.lock import StageLock

    finetune(config(split_folder, tmp_path / "run", epochs=1), progress=False)
    with StageLock(tmp_path / "run", "finetune"):  # what a training process holds (a separate open file)
        with pytest.raises(RunBusyError, match="being written by another edgetl process"):
            resume(tmp_path / "run", epochs=3, progress=False)
        with pytest.raises(RunBusyError, match="being written by another edgetl process"):
            finetune(config(split_folder, tmp_path / "run", epochs=1), overwrite=True, progress=False)
    assert resume(tmp_path / "run", epochs=2, progress=False).metrics["epochs_run"] == 2


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_early(split_folder: Path, tmp_path: Path, monkeypatch):
    finetune(config(split_folder, tmp_path / "run", epochs=1), progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()

    def boom(self, progress, task):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Trainer, "_train_epoch", boom)
    with pytest.raises(RuntimeError, match="^out of memory$"):
        finetune(config(split_folder, tmp_path / "run", epochs=1), overwrite=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert Manifest.load(tmp_path / "run").completed("finetune")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "split"]  # no staging folder left


def test_dataset_paths_are_recorded_resolved(split_folder: Path, tmp_path: Path, monkeypatch):
    from edgetl.data import run_eval_samples

    monkeypatch.chdir(split_folder.parent)
    finetune(config(Path(split_folder.name), Path("run"), epochs=1), progress=False)
    monkeypatch.chdir(tmp_path.parent)  # later commands run from elsewhere
    manifest = Manifest.load(tmp_path / "run")
    assert manifest.stage("finetune")["options"]["data"] == str(split_folder.resolve())
    assert manifest.data["dataset"]["root"] == str(split_folder.resolve())
    assert len(run_eval_samples(manifest)) == 8


def test_default_output_never_lands_inside_the_data(image_folder: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(image_folder)  # a flat dataset: DATA/CLASS/*.png, working inside it
    result = finetune(config(Path("."), "", epochs=1), progress=False)
    assert result.run_dir == tmp_path / "runs" / "data-mobilenet_v3_small"
    assert sorted(p.name for p in image_folder.iterdir()) == ["cats", "dogs"]


def test_a_last_batch_of_one_image_does_not_break_batchnorm(tmp_path: Path):
    from edgetl.data import load_splits

    data = make_image_folder(tmp_path / "data", per_class=10)
    (data / "dogs" / "009.png").unlink()
    assert len(load_splits(data, val_fraction=0.1).train) % 4 == 1  # precondition: 17 images at batch 4
    cfg = config(data, tmp_path / "run", val_fraction=0.1, batch_size=4, epochs=1, freeze_bn=False)
    result = finetune(cfg, progress=False)  # BatchNorm in training mode cannot take a batch of one image
    assert result.metrics["epochs_run"] == 1


def test_a_tie_on_val_top1_is_broken_by_val_loss(split_folder: Path, tmp_path: Path):
    """The kept epoch has the best val top-1 and, among epochs that share it, the lowest val loss; patience
    counts only epochs that improve neither (8 val images: a linear probe ties on top-1 from epoch to epoch)."""
    cfg = config(split_folder, tmp_path / "run", strategy="linear-probe", model="efficientnet_lite0",
                 pretrained=True, epochs=6, lr=0.01, patience=2)
    result = finetune(cfg, progress=False)
    history = result.history
    top = max(h["val_top1"] for h in history)
    tied = [h for h in history if h["val_top1"] == top]
    assert len(tied) >= 2, history  # the rule is exercised: the first such epoch is not simply kept
    best = min(tied, key=lambda h: h["val_loss"])
    assert result.metrics["best_epoch"] == best["epoch"] and best is not tied[0], history
    assert result.metrics["val_loss"] == pytest.approx(best["val_loss"], abs=1e-4)
    # patience 2 runs out only after two epochs that improve neither top-1 nor, at the same top-1, val loss
    stale = [h["epoch"] for h in history if h["epoch"] > best["epoch"]]
    assert result.metrics["epochs_run"] == (cfg.epochs if len(stale) < 2 else best["epoch"] + 2), history
