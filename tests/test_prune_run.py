"""`edgetl prune`: a child run with its parent's lineage and split, a pruned checkpoint that loads with
weights_only=True everywhere, export and target builds unchanged, distillation recovery that resumes, and
one-line errors for bad requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.errors import ConfigError, RunFolderError
from edgetl.prune import PruneConfig, parse_macs, prune


def _manifest(run: Path) -> dict:
    return json.loads((run / "edgetl.json").read_text())


@pytest.fixture(scope="module")
def parent(learned_base, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("prune") / "parent"
    shutil.copytree(learned_base, run)
    return run


@pytest.fixture(scope="module")
def child(parent) -> Path:
    result = prune(parent, PruneConfig(ratio=0.4, epochs=2, patience=None, workers=0, round_to=8, feature_weight=0.5,
                                       mixup=0.2, feature_layers=("blocks.*.*.conv_pwl",), augment_strength=1.5,
                                       ema=0.9, layer_ratio=("conv_head=0.2",)),
                   progress=False)
    return result.run_dir


def test_child_run_records_its_parent_and_the_report(parent, child):
    data = _manifest(child)
    assert child == parent.parent / "parent-pruned"
    assert data["parent"]["run"] == str(parent.resolve()) and data["parent"]["stage"] == "prune"
    assert (child / "split.json").read_bytes() == (parent / "split.json").read_bytes()
    report = data["stages"]["prune"]["metrics"]
    assert data["stages"]["prune"]["status"] == "complete" and data["stages"]["finetune"]["status"] == "complete"
    assert report["macs_after"] < 0.8 * report["macs_before"] and report["params_after"] < report["params_before"]
    # channels chosen by reconstruction error (the default); uniform pruning keeps only the classifier's
    # outputs: it is the one layer that lost inputs, the one re-solved by least squares (default scope)
    assert data["stages"]["prune"]["options"]["importance"] == "reconstruction"
    repair = report["repair"]
    assert repair["method"] == "least squares" and repair["scope"] == "inputs" and list(repair["errors"]) == ["classifier"]
    assert repair["errors"]["classifier"]["after"] <= repair["errors"]["classifier"]["before"]
    assert repair["images"] == len(json.loads((parent / "split.json").read_text())["train"]["files"])
    # recovery starts from the repaired model as its epoch-0 candidate, so it never ends worse
    assert report["top1_recovered"] >= report["top1_repaired"]
    assert report["top1_recovered"] == data["stages"]["finetune"]["metrics"]["top1"]
    # recovery trains with the fixture's --augment-strength, not the parent's (1.0)
    assert data["stages"]["finetune"]["options"]["augment_strength"] == 1.5
    assert data["stages"]["finetune"]["options"]["ema"] == 0.9  # the kept weights are the recovery's average
    assert _manifest(parent)["stages"]["finetune"]["options"]["augment_strength"] == 1.0
    assert report["checkpoint_bytes_after"] < report["checkpoint_bytes_before"]
    # conv_head lost channels, so the classifier reads fewer features: which of the parent's, for the
    # feature distillation (the fixture recovers with --feature-weight)
    from edgetl.models import load_run_model

    features = report["classifier_inputs_kept"]
    classifier = load_run_model(child)[0].get_submodule(data["model"]["head"][0])
    assert len(features) == classifier.in_features == 1024 and features == sorted(set(features))  # --layer-ratio 0.2
    assert data["stages"]["prune"]["options"]["layer_ratio"] == ["conv_head=0.2"]
    assert set(features) <= set(range(1280)) and features != list(range(1024))  # chosen, not the first 1024
    # the two counters agree within 2 %, or the report says why they differ (never neither, never both)
    assert report["macs_torch_pruning_after"] > 0
    assert report["macs_counters_agree"] == (report["macs_counters_note"] is None)
    assert report["macs_counters_agree"] or len(report["macs_counters_note"]) > 20
    # the second counter sees the same pruning (within a few points of the standard count's reduction)
    tp_reduction = 1 - report["macs_torch_pruning_after"] / report["macs_torch_pruning_before"]
    assert abs(tp_reduction - report["macs_reduction"]) < 0.05


def test_status_of_a_pruned_run_checks_its_parent_not_its_own_checkpoint(parent, child):
    """The prune stage read the parent's checkpoint.pt, not the child's (which recovery rewrote): the
    lineage records it, the child is current, and a changed parent checkpoint is what makes it stale."""
    from edgetl.run import run_status
    from edgetl.run.integrity import stale_reason
    from edgetl.run.manifest import Manifest

    manifest = Manifest.load(child)
    lineage = manifest.parent
    parent_digest = Manifest.load(parent).stage("finetune")["artifacts"]["checkpoint.pt"]["sha256"]
    assert lineage["inputs"] == {"checkpoint.pt": parent_digest} and manifest.stage("prune")["inputs"] == {}
    assert stale_reason(manifest, "prune") is None
    assert {s.stage: s.state for s in run_status(child)}["prune"] == "current"
    lineage["inputs"]["checkpoint.pt"] = "0" * 64  # as if the parent had been fine-tuned again since
    assert stale_reason(manifest, "prune").startswith("the parent's checkpoint.pt was rewritten by 'finetune'")


def test_pruned_checkpoint_loads_with_weights_only(child):
    import torch

    from edgetl.models import load_checkpoint, load_run_model

    raw = torch.load(child / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert raw["architecture"] and json.dumps(raw["architecture"])
    model, _ = load_checkpoint(child / "checkpoint.pt")
    parent_model, _ = load_run_model(Path(_manifest(child)["parent"]["run"]))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in parent_model.parameters())
    x = torch.zeros(2, 3, 32, 32)
    assert model(x).shape == parent_model(x).shape == (2, 3)


def test_export_and_target_build_of_the_pruned_run(child):
    from edgetl.build import TargetBuildConfig, build_target
    from edgetl.export import ExportConfig, export_onnx

    result = export_onnx(child, ExportConfig())
    assert result.metrics["top1_agreement"] == 1.0 and result.metrics["max_abs_diff"] < 1e-3
    built = build_target(child, TargetBuildConfig(target="jetson", precision="fp16", latency_runs=0))
    check = built.metrics["fp16_check"]  # top-1 agreement is meaningless on near-tied logits; the logits are not
    assert check["runs_under_onnxruntime"] and check["max_abs_logit_diff_vs_float"] < 0.05, check


def test_bench_parent_and_child_in_one_report(parent, child, tmp_path):
    from edgetl.bench import BenchConfig, benchmark

    config = BenchConfig(batch_sizes=(1,), warmup=1, iterations=3, rounds=1, min_iterations=2, runtimes=("torch",),
                         output=str(tmp_path / "b"))
    report = benchmark([parent, child], config, progress=False)
    rows = {r["key"]: r for r in report.data["results"]}
    assert set(rows) == {"parent/checkpoint.pt", "parent-pruned/checkpoint.pt"}
    assert all(r["status"] == "ok" and r["latency"] for r in rows.values()), rows
    parent_row, child_row = rows["parent/checkpoint.pt"], rows["parent-pruned/checkpoint.pt"]
    assert parent_row["label"].startswith("parent: ") and child_row["label"].startswith("parent-pruned: ")
    vs = child_row["vs_reference"]  # the child is compared with the parent's float model, not with itself
    assert vs["reference"] == parent_row["label"] and not vs["is_reference"]


def test_resume_of_a_pruned_run_distils_again(child, tmp_path):
    from edgetl import finetune
    from edgetl.prune import resume

    run = tmp_path / "again"
    shutil.copytree(child, run)
    with pytest.raises(RunFolderError, match=r"made by `edgetl prune`.*edgetl\.resume\("):
        finetune.resume(run, epochs=3, progress=False)  # a pruned run resumes through its own stage
    options = _manifest(run)["stages"]["finetune"]["options"]
    result = resume(run, epochs=3, progress=False)
    assert result.metrics["epochs_run"] == 3
    data = _manifest(run)
    assert data["stages"]["prune"]["metrics"]["top1_recovered"] == result.metrics["top1"]
    assert data["stages"]["prune"]["status"] == "complete" and data["stages"]["finetune"]["status"] == "complete"
    assert data["stages"]["finetune"]["options"] == {**options, "epochs": 3}  # only what the resume changed


def test_resumed_recovery_distils_with_the_recorded_options(child):
    from edgetl.models import build_model
    from edgetl.prune import resumed_loss
    from edgetl.run.manifest import Manifest

    manifest = Manifest.load(child)
    bundle = build_model(manifest.model["name"], len(manifest.classes), pretrained=False)
    loss = resumed_loss(manifest, bundle)
    assert loss.hard.criterion.label_smoothing == manifest.stage("finetune")["options"]["label_smoothing"] == 0.1
    assert (loss.feature_weight, loss.mixup, loss.alpha) == (0.5, 0.2, 0.7)
    # the recorded points: the classifier's input, read at the parent features the pruned classifier kept,
    # and the output of every conv_pwl the fixture named (conv_pwl lost channels too: kept indices)
    points = manifest.stage("prune")["metrics"]["feature_points"]
    assert points[0] == [bundle.head[0], "input", manifest.stage("prune")["metrics"]["classifier_inputs_kept"]]
    assert len(points) == 16 and all(n.endswith("conv_pwl") and side == "output" and index for n, side, index in points[1:])
    assert [t[2] for t in loss._taps] == [p[2] for p in points]
    classifier = bundle.model.get_submodule(bundle.head[0])
    assert classifier._forward_hooks and loss.teacher.get_submodule(bundle.head[0])._forward_hooks


def test_pruning_a_pruned_run_keeps_both_parents(child):
    # a learning rate that wrecks the model: recovery keeps the repaired model (epoch 0) instead
    result = prune(child, PruneConfig(ratio=0.2, epochs=1, lr=10.0, patience=None, workers=0, round_to=8),
                   progress=False)
    grandchild = result.run_dir
    lineage = _manifest(grandchild)["parent"]
    assert lineage["run"] == str(child.resolve()) and lineage["parent"]["run"] == _manifest(child)["parent"]["run"]
    finetune = _manifest(grandchild)["stages"]["finetune"]["metrics"]
    assert finetune["best_epoch"] == 0 and result.metrics["top1_recovered"] == result.metrics["top1_repaired"]


def test_scope_all_re_solves_every_layer_on_augmented_views(parent, child, tmp_path):
    result = prune(parent, PruneConfig(ratio=0.4, epochs=1, workers=0, round_to=8, importance="magnitude",
                                       reconstruct_scope="all", calibration_views=2, layer_ratio=("conv_head=0.2",),
                                       output=str(tmp_path / "all")),
                   progress=False)
    repair, inputs = result.metrics["repair"], _manifest(child)["stages"]["prune"]["metrics"]["repair"]
    assert result.metrics["macs_after"] == _manifest(child)["stages"]["prune"]["metrics"]["macs_after"]
    assert repair["scope"] == "all" and repair["images"] == 2 * inputs["images"]
    # every layer after the first pruned one (the stem), the pruner's record saying which channels each kept
    assert list(repair["errors"])[0] == "conv_stem" and list(repair["errors"])[-1] == "classifier"
    assert "blocks.1.0.conv_dw" in repair["errors"] and len(repair["errors"]) > 30
    assert all(e["after"] <= e["before"] + 1e-3 for e in repair["errors"].values()), repair["errors"]


RATIO = r"--ratio is the fraction of channels to remove, in \(0, 1\) exclusive; got "
NAME_RATIO = r"--layer-ratio takes NAME=RATIO, .*; got "


@pytest.mark.parametrize("bad, match", [
    ({"ratio": 0.0}, RATIO + "0.0"), ({"ratio": 1.0}, RATIO + "1.0"), ({"ratio": 1.5}, RATIO + "1.5"),
    ({"ratio": 0.3, "target_macs": "1G"}, "give one of --ratio, --target-macs and --max-latency"),
    ({"target_macs": "lots"}, "--target-macs takes a number of MACs such as 0.2G or 150M, not 'lots'"),
    ({"importance": "random"}, "--importance must be one of magnitude, .*, not 'random'"),
    ({"alpha": 2.0}, r"--alpha in \[0, 1\], got 4.0, 2.0"),
    ({"reconstruct_scope": "some"}, "--reconstruct-scope must be one of inputs, all, not 'some'"),
    ({"calibration_views": 0}, "--calibration-views must be at least 1, got 0"),
    ({"ratio": 0.3, "epochs": 0}, "--epochs must be at least 1"),
    ({"augment_strength": 2.5}, r"--augment-strength must be in \[0, 2\], got 2.5"),
    ({"augment_strength": -0.1}, r"--augment-strength must be in \[0, 2\], got -0.1"),
    ({"ema": 0.0}, r"--ema is a decay in \(0, 1\), got 0.0"), ({"ema": 1.0}, r"--ema is a decay in \(0, 1\), got 1.0"),
    ({"layer_ratio": ("conv_head",)}, NAME_RATIO + "'conv_head'"),
    ({"layer_ratio": ("conv_head=1.2",)}, NAME_RATIO + "conv_head=1.2"),
    ({"target_macs": "0.2G", "layer_ratio": ("conv_head=0.2",)}, "--layer-ratio sets final per-layer ratios: use it "
                                                                  "with --ratio, not with a target"),
], ids=lambda v: None if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_bad_config_is_refused_naming_the_option(bad, match):
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**bad)


def test_bad_requests(parent, tmp_path):
    assert parse_macs("0.2G") == 2e8 and parse_macs("150M") == 1.5e8
    with pytest.raises(ConfigError, match="--feature-layers 'blocks.*.conv_nothing' matches no module"):
        prune(parent, PruneConfig(ratio=0.3, feature_weight=1.0, feature_layers=("blocks.*.conv_nothing",),
                                  output=str(tmp_path / "badfeat")), progress=False)
    assert not (tmp_path / "badfeat").exists()
    with pytest.raises(ConfigError, match="--layer-ratio 'conv_hed' matches no module.*conv_head"):
        prune(parent, PruneConfig(ratio=0.3, layer_ratio=("conv_hed=0.5",), output=str(tmp_path / "badratio")),
              progress=False)
    assert not (tmp_path / "badratio").exists()
    with pytest.raises(RunFolderError, match="not an edgetl run folder"):
        prune(tmp_path, PruneConfig(ratio=0.3))
    empty = tmp_path / "nockpt"
    shutil.copytree(parent, empty)
    (empty / "checkpoint.pt").unlink()
    with pytest.raises(RunFolderError, match="checkpoint"):
        prune(empty, PruneConfig(ratio=0.3))


def test_unreachable_mac_target_names_the_closest(parent, tmp_path):
    with pytest.raises(ConfigError, match="closest reachable is"):
        prune(parent, PruneConfig(target_macs="1K", step_ratio=0.5, step_epochs=0, epochs=1, workers=0,
                                  output=str(tmp_path / "tiny")), progress=False)
    assert not (tmp_path / "tiny").exists()  # nothing half-written


def test_cli_prune_bad_ratio_is_one_line(parent):
    result = CliRunner().invoke(cli, ["prune", str(parent), "--ratio", "1.5"])
    assert result.exit_code != 0 and "Traceback" not in result.output and "1.5" in result.output


def test_keep_patterns_expand_to_module_names(parent):
    from edgetl.models import load_run_model
    from edgetl.prune import kept_modules

    model, _ = load_run_model(parent)
    kept = kept_modules(model, ("blocks.*.*.conv_pwl", "conv_stem"))
    assert "conv_stem" in kept and len(kept) > 5 and all(k == "conv_stem" or k.endswith("conv_pwl") for k in kept)
    with pytest.raises(ConfigError, match="matches no module"):
        kept_modules(model, ("blocks.*.conv_nothing",))


def test_iterative_mac_target_recovers_between_steps(parent, child, tmp_path, monkeypatch):
    from edgetl.train.losses import DistillationLoss

    before = _manifest(child)["stages"]["prune"]["metrics"]["macs_before"]
    built, closed = [], []
    original, close = DistillationLoss.__init__, DistillationLoss.close

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    def spy_close(self):
        closed.append(self)
        close(self)

    target = 0.6 * before  # a step removes 20% of the channels left: about 36% of the MACs, so two steps
    monkeypatch.setattr(DistillationLoss, "__init__", spy)
    monkeypatch.setattr(DistillationLoss, "close", spy_close)
    result = prune(parent, PruneConfig(target_macs=f"{target:.0f}", step_ratio=0.2, step_epochs=1, epochs=1,
                                       workers=0, round_to=8, importance="magnitude", feature_weight=0.5, mixup=0.2,
                                       feature_layers=("blocks.*.*.conv_pwl",), output=str(tmp_path / "it")),
                   progress=False)
    steps = result.metrics["steps"]
    assert result.metrics["macs_after"] <= target < steps[0]["macs"] and len(steps) >= 2
    assert [s["macs"] for s in steps] == sorted((s["macs"] for s in steps), reverse=True)
    # the last step's top-1 (after its recovery) is the model the final recovery starts from
    metrics = result.metrics
    assert metrics["top1_pruned"] == metrics["top1_repaired"] == steps[-1]["val_top1"]
    assert metrics["top1_recovered"] >= metrics["top1_repaired"]
    # one loss per step recovery plus the final recovery; each step's feature hooks were removed after it
    assert len(built) == len(steps) + 1 and all(b.mixup == 0.2 and len(b._taps) == 16 for b in built)
    assert closed == built[:-1]


def test_layer_ratio_from_a_config_file_mapping_or_the_command_line():
    assert PruneConfig(ratio=0.5, layer_ratio={"conv_head": 0.2, "blocks.5": 0.7}).layer_ratio == (
        "conv_head=0.2", "blocks.5=0.7")
    assert PruneConfig(ratio=0.5, layer_ratio=("blocks.*.*.conv_pw=.3",)).layer_ratio == ("blocks.*.*.conv_pw=0.3",)
    result = CliRunner().invoke(cli, ["prune", "--ratio", "0.5", "--layer-ratio", "conv_head"])
    assert result.exit_code != 0 and "Traceback" not in result.output and "NAME=RATIO" in result.output
