"""Reconstruction of every layer after the first pruned one (scope "all"): the pruner's record of kept output
channels, the chain-cached activations, depthwise convs (timm's Conv2dSame too), and channel selection by
reconstruction error."""

from __future__ import annotations

import copy
import itertools

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from torch import nn

from edgetl.compress.prune import PruneSettings, StructuredPruner, reconstruct_layers
from edgetl.compress.prune.feeding import Feeder, chains
from edgetl.compress.prune.reconstruct import plan_layers
from edgetl.compress.prune.selection import (
    ReconstructionImportance,
    elimination_scores,
    input_grams,
)
from edgetl.errors import ConfigError

KEEP = ("stem", "blocks.0.b.6", "blocks.1.0.b.6", "head")


def block(c: int, e: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU(),
                         nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.ReLU(),
                         nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))


class Residual(nn.Module):
    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        self.b = block(c, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(x)


class Net(nn.Module):
    """stem -> two inverted residuals (a chain) -> 1x1 head -> linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Residual(8, 32), nn.Sequential(Residual(8, 32)))
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


def teacher_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net().eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.3)
            module.running_var.uniform_(0.5, 2)
    return net


def batches(count: int = 4, seed: int = 0):
    return lambda: (torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(seed + i)) for i in range(count))


def pruned(teacher: nn.Module, importance=None, ratio: float = 0.5):
    student = copy.deepcopy(teacher)
    pruner = StructuredPruner(student, torch.randn(1, 3, 12, 12), PruneSettings(ratio=ratio, round_to=None, ignored=KEEP),
                              ["fc"], importance=importance)
    pruner.step()
    return student, pruner.kept_outputs


def output_error(student: nn.Module, teacher: nn.Module) -> float:
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        s, t = student.eval()(x), teacher(x)
    return float(((s - t) ** 2).sum() / (t ** 2).sum())


def test_pruner_records_the_teacher_index_of_every_kept_output_channel():
    teacher = teacher_net()
    student, kept = pruned(teacher)
    for name in ("blocks.0.b.0", "blocks.0.b.3", "blocks.1.0.b.0"):
        index = kept[name]
        assert len(index) == 16 and index == sorted(index)
        s, t = dict(student.named_modules())[name], dict(teacher.named_modules())[name]
        assert torch.equal(s.weight, t.weight[index])
    bn_index = kept["blocks.0.b.1"]
    assert torch.equal(student.blocks[0].b[1].running_mean, teacher.blocks[0].b[1].running_mean[bn_index])
    assert "head" not in kept and "blocks.0.b.6" not in kept  # kept whole


def test_chains_flatten_plain_sequentials_only():
    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1)), Custom(nn.ReLU()))
    model.single = nn.Sequential(nn.ReLU())
    assert chains(model) == [["features.0", "features.1.0", "features.1.1", "features.2"]]
    assert chains(Net()) == [["blocks.0", "blocks.1.0"]]


def test_feeder_matches_full_forward_passes_after_upstream_edits():
    teacher = teacher_net()
    student, _ = pruned(teacher)
    feeder = Feeder(student, teacher, batches())

    def direct(name: str):
        xs, ys = [], []
        hooks = [dict(student.named_modules())[name].register_forward_pre_hook(lambda m, a: xs.append(a[0])),
                 dict(teacher.named_modules())[name].register_forward_hook(lambda m, a, o: ys.append(o))]
        with torch.no_grad():
            for batch in batches()():
                student(batch), teacher(batch)
        for hook in hooks:
            hook.remove()
        return list(zip(xs, ys))

    for name in ("blocks.0.b.3", "blocks.1.0.b.6", "head"):  # in the chain, advancing, then outside it
        for (x, y), (x_ref, y_ref) in itertools.zip_longest(feeder.pairs(name), direct(name)):
            assert torch.allclose(x, x_ref, atol=1e-6) and torch.allclose(y, y_ref, atol=1e-6)
        with torch.no_grad():  # edit the layer: the next one's inputs must follow
            dict(student.named_modules())[name].weight.mul_(0.5)


def test_scope_all_plans_subsets_and_depthwise_and_skips_heads():
    teacher = teacher_net()
    student, kept = pruned(teacher)
    plan = plan_layers(student, teacher, scope="all", kept_outputs=kept, skip=["fc"])
    assert [(n, k) for n, k, _ in plan] == [
        ("blocks.0.b.0", "dense"), ("blocks.0.b.3", "depthwise"), ("blocks.0.b.6", "dense"),
        ("blocks.1.0.b.0", "dense"), ("blocks.1.0.b.3", "depthwise"), ("blocks.1.0.b.6", "dense"), ("head", "dense")]
    assert plan[0][2] == kept["blocks.0.b.0"] and plan[2][2] is None
    assert [n for n, _, _ in plan_layers(student, teacher)] == ["blocks.0.b.6", "blocks.1.0.b.6"]
    # without the record, layers whose outputs were pruned are left alone (which channels is unknown)
    assert [n for n, _, _ in plan_layers(student, teacher, scope="all", skip=["fc"])] == [
        "blocks.0.b.6", "blocks.1.0.b.6", "head"]
    with pytest.raises(ConfigError, match="scope"):
        plan_layers(student, teacher, scope="every")


def test_scope_all_restores_corrupted_layers_and_beats_inputs_only():
    teacher = teacher_net()
    student, kept = pruned(teacher)
    with torch.no_grad():  # layers upstream of any pruned input: exact recovery is possible
        student.blocks[0].b[3].weight.normal_()
        student.blocks[0].b[0].weight.normal_()
    inputs_only, everything = copy.deepcopy(student), student
    reconstruct_layers(inputs_only, teacher, batches(), ridge=1e-9)
    report = reconstruct_layers(everything, teacher, batches(), ridge=1e-9, scope="all", kept_outputs=kept, skip=["fc"])
    index = kept["blocks.0.b.3"]
    assert torch.allclose(everything.blocks[0].b[3].weight, teacher.blocks[0].b[3].weight[index], atol=1e-4)
    assert torch.allclose(everything.blocks[0].b[0].weight, teacher.blocks[0].b[0].weight[index], atol=1e-4)
    assert report["scope"] == "all" and report["layers"] == 7
    assert all(e["after"] <= e["before"] + 1e-9 for e in report["errors"].values())
    assert output_error(everything, teacher) < 0.5 * output_error(inputs_only, teacher)


def test_depthwise_conv2d_same_is_solved_with_its_asymmetric_padding():
    same = pytest.importorskip("timm.layers.conv2d_same").Conv2dSame
    torch.manual_seed(3)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 1), same(8, 8, 3, stride=2, groups=8, bias=True)).eval()
    student = nn.Sequential(nn.Conv2d(3, 4, 1), same(4, 4, 3, stride=2, groups=4, bias=True)).eval()
    index = [0, 2, 5, 7]
    with torch.no_grad():
        student[0].weight.copy_(teacher[0].weight[index]), student[0].bias.copy_(teacher[0].bias[index])
    data = lambda: (torch.randn(4, 3, 11, 11, generator=torch.Generator().manual_seed(i)) for i in range(3))  # noqa: E731
    report = reconstruct_layers(student, teacher, data, ridge=1e-9, scope="all", kept_outputs={"0": index, "1": index})
    assert report["errors"]["1"]["before"] > 0.1 and report["errors"]["1"]["after"] < 1e-8
    assert torch.allclose(student[1].weight, teacher[1].weight[index], atol=1e-4)
    assert torch.allclose(student[1].bias, teacher[1].bias[index], atol=1e-4)


def test_elimination_scores_follow_the_greedy_least_squares_order():
    torch.manual_seed(0)
    x = torch.randn(400, 6, dtype=torch.float64)
    x[:, 5] = x[:, 0] + 0.01 * torch.randn(400, dtype=torch.float64)  # 0 and 5 nearly duplicate each other
    weight = torch.randn(3, 6, dtype=torch.float64)
    y = x @ weight.T
    scores = elimination_scores(weight, x.T @ x, ridge=0)
    alive, order = list(range(6)), []
    while alive:  # brute force: refit without each candidate, drop the cheapest
        def error(j):
            rest = [k for k in alive if k != j]
            return float(((y - x[:, rest] @ torch.linalg.lstsq(x[:, rest], y).solution) ** 2).sum()) if rest else 1e9
        j = min(alive, key=error)
        order.append(j), alive.remove(j)
    assert torch.argsort(scores).tolist() == order
    assert order[0] in (0, 5) and scores.min() < 1e-4


def test_reconstruction_importance_drops_duplicated_channels():
    """Make half of every expansion a copy of the other half: reconstruction importance removes the copies
    (the projection then rebuilds the output exactly); magnitude cannot tell copies from originals."""
    teacher = teacher_net(1)
    with torch.no_grad():
        for b in (teacher.blocks[0].b, teacher.blocks[1][0].b):
            for i in (0, 3):
                b[i].weight[16:] = b[i].weight[:16]
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(b[1], attr)[16:] = getattr(b[1], attr)[:16]
                getattr(b[4], attr)[16:] = getattr(b[4], attr)[:16]
            b[6].weight[:, 16:] *= 3  # the copies look more important by magnitude
    layers = ["blocks.0.b.6", "blocks.1.0.b.6"]
    grams = input_grams(teacher, layers, batches())
    scores = elimination_scores(teacher.get_submodule("blocks.0.b.6").weight, grams["blocks.0.b.6"])
    assert scores.shape == (32,)
    assert sorted(int(c) % 16 for c in scores.argsort()[16:]) == list(range(16))
    import torch_pruning as tp

    importance = ReconstructionImportance(grams, tp.importance.GroupMagnitudeImportance(p=2))
    student, kept = pruned(teacher, importance)
    assert set(importance.scores) == set(layers)
    assert sorted(c % 16 for c in kept["blocks.0.b.0"]) == list(range(16))  # one of each pair
    reconstruct_layers(student, teacher, batches(), ridge=1e-9, scope="all", kept_outputs=kept, skip=["fc"])
    assert output_error(student, teacher) < 1e-6
