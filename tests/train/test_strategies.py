"""Layer groups and the unfreezing schedule: which backbone parameters train in which epoch."""

from __future__ import annotations

import math

import pytest

from edgetl.models import build_model
from edgetl.train.strategies import Unfreezer, layer_groups


def _named_groups(name: str, **kwargs) -> tuple[list[list[str]], list[str], set[str]]:
    """(parameter names per group, head module names, names of every parameter of the model)."""
    bundle = build_model(name, 3, pretrained=False, **kwargs)
    names = {id(p): n for n, p in bundle.model.named_parameters()}
    groups = [[names[id(p)] for p in params] for params in layer_groups(bundle.model, bundle.head)]
    return groups, bundle.head, set(names.values())


def _prefixes(groups: list[list[str]], depth: int) -> list[set[str]]:
    """The module prefixes (first ``depth`` name parts) each group's parameters come from."""
    return [{".".join(n.split(".")[:depth]) for n in group} for group in groups]


def _assert_partition(groups: list[list[str]], heads: list[str], everything: set[str]) -> None:
    """Each backbone parameter is in exactly one group; no head parameter is in any."""
    flat = [n for group in groups for n in group]
    assert len(flat) == len(set(flat)), "a parameter is in two groups"
    head = {n for n in everything if any(n.startswith(h + ".") for h in heads)}
    assert head and not head & set(flat)
    assert set(flat) == everything - head


# -- layer groups --------------------------------------------------------------------------------
def test_timm_model_groups_are_timm_stages():
    """timm's group_matcher (coarse): the stem, then one group per residual stage; not the module tree,
    which would split the stem into conv1 and bn1 and each stage into its blocks."""
    groups, heads, everything = _named_groups("timm:resnet18")
    assert heads == ["fc"]
    assert _prefixes(groups, 1) == [{"conv1", "bn1"}, {"layer1"}, {"layer2"}, {"layer3"}, {"layer4"}]
    _assert_partition(groups, heads, everything)


def test_lite0_groups_follow_timm_with_the_final_conv_on_top():
    """EfficientNet-Lite0 (a timm model): stem, blocks 0-6; timm puts conv_head/bn2 with the last block."""
    groups, heads, everything = _named_groups("efficientnet_lite0")
    assert heads == ["classifier"]
    assert _prefixes(groups, 1)[0] == {"conv_stem", "bn1"}
    assert _prefixes(groups[1:], 2)[:-1] == [{f"blocks.{i}"} for i in range(6)]
    assert _prefixes(groups[-1:], 2) == [{"blocks.6", "conv_head.weight", "bn2.weight", "bn2.bias"}]
    _assert_partition(groups, heads, everything)


def test_torchvision_groups_follow_the_module_tree():
    """No group_matcher: top-level children, Sequentials expanded, in forward order; the new head
    (classifier.3) is left out but the classifier's first Linear is a group of its own."""
    groups, heads, everything = _named_groups("mobilenet_v3_small")
    assert heads == ["classifier.3"]
    assert _prefixes(groups, 2) == [{f"features.{i}"} for i in range(13)] + [{"classifier.0"}]
    _assert_partition(groups, heads, everything)

    groups, heads, everything = _named_groups("resnet18")
    blocks = [{f"layer{s}.{b}"} for s in (1, 2, 3, 4) for b in (0, 1)]
    assert _prefixes(groups, 2) == [{"conv1.weight"}, {"bn1.weight", "bn1.bias"}] + blocks
    _assert_partition(groups, heads, everything)


def test_every_head_is_left_out():
    """Inception v3 has two heads (fc and AuxLogits.fc): neither trains as a backbone group, but the
    auxiliary branch's convolutions do."""
    groups, heads, everything = _named_groups("inception_v3")
    assert heads == ["fc", "AuxLogits.fc"]
    _assert_partition(groups, heads, everything)
    assert any(n.startswith("AuxLogits.conv0.") for group in groups for n in group)


# -- the schedule --------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1, 3, 8, 14])
@pytest.mark.parametrize("epochs", range(1, 11))
def test_gradual_schedule_reaches_every_group_by_half_way(epochs: int, total: int):
    plain = Unfreezer("gradual", [[]] * total, [], epochs)
    counts = [plain.trainable_groups(e) for e in range(epochs)]
    assert counts[0] == 0  # the new head trains alone first
    assert counts == sorted(counts) and max(counts) <= total
    half = math.ceil(epochs / 2)  # the first epoch that starts at or after half-way
    assert all(c == total for c in counts[half:])
    if half >= 2 and total >= 2:
        assert 0 < counts[1] < total  # a ramp, not a jump
    probed = Unfreezer("gradual", [[]] * total, [], epochs, probed_head=True)
    probed_counts = [probed.trainable_groups(e) for e in range(epochs)]
    assert probed_counts[0] > 0  # a head fitted on cached features needs no head-only epoch
    assert all(p >= c for p, c in zip(probed_counts, counts))
    assert all(c == total for c in probed_counts[half - 1:])


@pytest.mark.parametrize("strategy,expected", [("full", 14), ("linear-probe", 0)])
def test_full_and_linear_probe_are_constant(strategy: str, expected: int):
    unfreezer = Unfreezer(strategy, [[]] * 14, [], 6)
    assert [unfreezer.trainable_groups(e) for e in range(6)] == [expected] * 6


@pytest.mark.parametrize("strategy", ["gradual", "full", "linear-probe"])
def test_apply_trains_the_top_groups_and_the_head(strategy: str):
    """requires_grad per group: the last ``n`` groups of layer_groups (nearest the head) train, every
    earlier group is frozen, the head always trains; applying an earlier epoch again freezes again."""
    bundle = build_model("mobilenet_v3_small", 3, pretrained=False)
    groups = layer_groups(bundle.model, bundle.head)
    head = [p for h in bundle.head for p in bundle.model.get_submodule(h).parameters()]
    unfreezer = Unfreezer(strategy, groups, head, epochs=6)
    for epoch in [*range(6), 0]:
        n = unfreezer.apply(epoch)
        assert n == unfreezer.trainable_groups(epoch)
        trains = [all(p.requires_grad for p in g) for g in groups]
        frozen = [not any(p.requires_grad for p in g) for g in groups]
        assert trains == [False] * (len(groups) - n) + [True] * n, (epoch, n)
        assert all(t or f for t, f in zip(trains, frozen))  # a group trains or is frozen as a whole
        assert all(p.requires_grad for p in head)
