"""Structured pruning (Torch-Pruning), the architecture record, MAC counting and 2:4 sparsity."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from torch import nn

from edgetl.compress.prune import (
    PruneSettings,
    StructuredPruner,
    apply_architecture,
    apply_semi_structured_2_4,
    architecture_record,
    count_macs,
    keep_masks,
    prune_model,
    sparsity_2_4_fraction,
)
from edgetl.errors import ConfigError, ModelError
from edgetl.models import build_model

SIZE = 64


def example(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


class TinyNet(nn.Module):
    """Small CNN with a residual add and channel counts that are multiples of 4 (fast importance tests)."""

    def __init__(self, fc_in: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(fc_in, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def lite0():
    """Lite0 (offline ImageNet weights) before and after pruning 0.4 with round_to 16."""
    bundle = build_model("efficientnet_lite0", 2, pretrained=True, image_size=SIZE)
    before = {n: (m.in_channels, m.out_channels, m.groups) for n, m in convs(bundle.model).items()}
    stats = prune_model(bundle.model, example(), PruneSettings(ratio=0.4, round_to=16), bundle.head)
    return bundle, before, stats


# -- settings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2, True, float("nan"), "0.4"])
def test_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        PruneSettings(ratio=ratio)


@pytest.mark.parametrize("field, value", [("importance", "l1"), ("round_to", 0), ("iterative_steps", 0),
                                          ("global_pruning", "yes"), ("ignored", [3])])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        PruneSettings(**{field: value})


def test_settings_from_dict():
    settings = PruneSettings.from_dict({"ratio": 0.5, "ignored": ["stem.0"], "round_to": None})
    assert (settings.ratio, settings.ignored, settings.effective_round_to) == (0.5, ("stem.0",), None)
    assert PruneSettings(round_to=1).effective_round_to is None
    with pytest.raises(ConfigError, match="'ratoi' is unknown. Did you mean: ratio"):
        PruneSettings.from_dict({"ratoi": 0.5})


# -- EfficientNet-Lite0 ---------------------------------------------------------------------------------------

def test_lite0_pruned_with_rounded_channels_and_fewer_macs(lite0):
    bundle, before, stats = lite0
    model = bundle.model.eval()
    assert model(example(2)).shape == (2, 2)
    assert stats["macs_after"] <= 0.7 * stats["macs_before"]
    assert stats["macs_tp_after"] <= 0.7 * stats["macs_tp_before"]
    assert stats["params_after"] < 0.7 * stats["params_before"]
    pruned = 0
    for name, conv in convs(model).items():
        in_before, out_before, groups_before = before[name]
        depthwise = groups_before == in_before == out_before > 1
        if depthwise:  # follows its producer: still depthwise, same width as its input
            assert conv.groups == conv.in_channels == conv.out_channels, name
        if conv.out_channels != out_before:
            pruned += 1
            assert conv.out_channels % 16 == 0, (name, conv.out_channels)
        else:  # kept whole: rounding 24 or 16 channels down to a multiple of 16 would leave none
            assert out_before < 2 * 16 or conv.out_channels % 16 == 0, (name, out_before)
    assert pruned >= 40, pruned
    head = model.get_submodule(bundle.head[0])
    assert head.out_features == 2 and head.in_features == model.conv_head.out_channels == 768


def test_architecture_roundtrip_through_weights_only_checkpoint(lite0, tmp_path):
    bundle, _, _ = lite0
    pruned = bundle.model.eval()
    record = architecture_record(pruned)
    json.loads(json.dumps(record))
    assert record["conv_head"]["attrs"] == {"in_channels": 192, "out_channels": 768, "groups": 1}
    assert record["bn2"]["tensors"]["running_var"] == [768]
    path = tmp_path / "pruned.pt"
    torch.save({"state_dict": pruned.state_dict(), "architecture": record}, path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    fresh = build_model("efficientnet_lite0", 2, pretrained=False, image_size=SIZE).model
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(checkpoint["state_dict"])
    apply_architecture(fresh, checkpoint["architecture"])
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    fresh.eval()
    x = example(2)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    assert architecture_record(fresh) == record


def test_apply_architecture_refuses_another_model(lite0):
    record = architecture_record(lite0[0].model)
    other = build_model("mobilenet_v3_small", 2, pretrained=False, image_size=SIZE).model
    with pytest.raises(ModelError, match="'conv_stem' this model does not have"):
        apply_architecture(other, record)
    fresh = build_model("efficientnet_lite0", 2, pretrained=False, image_size=SIZE).model
    with pytest.raises(ModelError, match="records 'bn2' as a Linear"):
        apply_architecture(fresh, {"bn2": {**record["classifier"]}})


def test_count_macs_two_counters(lite0):
    bundle, _, stats = lite0
    fresh = build_model("efficientnet_lite0", 2, pretrained=False, image_size=SIZE).model
    counts = {"unpruned": count_macs(fresh, example()), "pruned": count_macs(bundle.model, example())}
    for c in counts.values():
        assert c["macs"] > 0 and c["macs_flop_counter"] > 0 and not c["agree"]
        assert "Conv2dSame" in c["reason"] and "BatchNormAct2d" in c["reason"]
    assert counts["unpruned"]["params"] == sum(p.numel() for p in fresh.parameters())
    assert counts["pruned"]["macs_flop_counter"] == stats["macs_after"]
    ratio_tp = counts["pruned"]["macs"] / counts["unpruned"]["macs"]
    ratio_fc = counts["pruned"]["macs_flop_counter"] / counts["unpruned"]["macs_flop_counter"]
    assert ratio_fc < 0.7 and abs(ratio_tp - ratio_fc) < 0.03
    resnet = count_macs(build_model("resnet18", 2, pretrained=False, image_size=SIZE).model, example())
    assert resnet["agree"] and resnet["reason"] is None
    assert resnet["macs_flop_counter"] == 148_046_848  # 1.81 GMACs at 224 px, scaled by (64/224)^2


# -- MobileNetV3 (SE, hardswish) and ResNet18 (residual adds) -------------------------------------------------

@pytest.mark.parametrize("name, ignored", [("mobilenet_v3_small", "features.1.block.1.fc1"),
                                           ("resnet18", "layer2.0.conv1")])
def test_prune_keeps_ignored_layers_whole(name, ignored):
    bundle = build_model(name, 2, pretrained=False, image_size=SIZE)
    model = bundle.model
    kept = model.get_submodule(ignored).weight.shape[0]
    others = {n: c.out_channels for n, c in convs(model).items()}
    settings = PruneSettings(ratio=0.3, ignored=(ignored,), round_to=8)
    stats = prune_model(model, example(), settings, bundle.head)
    assert model.get_submodule(ignored).out_channels == kept == model.get_submodule(ignored).weight.shape[0]
    assert model.eval()(example(3)).shape == (3, 2)
    assert stats["macs_after"] < 0.8 * stats["macs_before"]
    assert sum(c.out_channels < others[n] for n, c in convs(model).items()) >= 10
    assert model.get_submodule(bundle.head[0]).out_features == 2


def test_unknown_ignored_name_suggests_close_ones():
    bundle = build_model("resnet18", 2, pretrained=False, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"'layer2.0.conv3' is not a module .*Did you mean: layer2.0.conv"):
        StructuredPruner(bundle.model, example(), PruneSettings(ignored=("layer2.0.conv3",)), bundle.head)


# -- importances, global ranking, iterative steps --------------------------------------------------------------

def _loss(model: nn.Module) -> torch.Tensor:
    return nn.functional.cross_entropy(model(example(4)), torch.tensor([0, 1, 2, 0]))


def test_taylor_needs_a_loss_and_iterates():
    model = TinyNet()
    pruner = StructuredPruner(model, example(), PruneSettings(importance="taylor", iterative_steps=2, round_to=4),
                              ["fc"])
    with pytest.raises(ConfigError, match="taylor .* needs a loss"):
        pruner.step()
    calls = []
    pruner.step(lambda m: calls.append(1) or _loss(m))
    assert (pruner.steps_done, pruner.steps_left, model.stem[0].out_channels) == (1, 1, 24)
    assert all(p.grad is None for p in model.parameters())
    pruner.step(lambda m: calls.append(1) or _loss(m))
    assert (len(calls), pruner.steps_left, model.stem[0].out_channels) == (2, 0, 16)
    assert model.body[0].out_channels == 16  # the residual add ties body's output to the stem's
    with pytest.raises(ConfigError, match="pruning step"):
        pruner.step(_loss)


@pytest.mark.parametrize("importance", ["magnitude", "lamp"])
def test_importances_prune_the_weakest_channels(importance):
    model = TinyNet()
    with torch.no_grad():
        model.stem[0].weight[:8] *= 1e-3  # 8 weak output channels, BatchNorm scales left alone
        model.body[0].weight[:8] *= 1e-3  # the residual add ties body's outputs to the stem's
        model.body[0].weight[:, :8] *= 1e-3
        model.fc.weight[:, :8] *= 1e-3
    strong = model.stem[0].weight[8:].clone()
    prune_model(model, example(), PruneSettings(ratio=0.25, importance=importance, round_to=None), ["fc"])
    assert torch.equal(model.stem[0].weight, strong)


def test_global_pruning_ranks_across_layers():
    bundle = build_model("mobilenet_v3_small", 2, pretrained=False, image_size=SIZE)
    before = {n: c.out_channels for n, c in convs(bundle.model).items()}
    prune_model(bundle.model, example(), PruneSettings(ratio=0.3, global_pruning=True, round_to=None), bundle.head)
    kept = {round(c.out_channels / before[n], 2) for n, c in convs(bundle.model).items() if c.groups == 1}
    assert len(kept) > 3 and min(kept) < 0.7  # uniform pruning would keep 0.7 of every layer
    assert bundle.model.eval()(example()).shape == (1, 2)


class NoGradNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().forward(x)


def test_untraceable_model_is_a_model_error_naming_the_layer():
    with pytest.raises(ModelError, match=r"mat1 and mat2 shapes .* \(in layer fc, a Linear\)"):
        StructuredPruner(TinyNet(fc_in=31), example(), PruneSettings(), ["fc"])
    with pytest.raises(ModelError, match="no prunable channel group in NoGradNet"):  # Torch-Pruning alone: no-op
        StructuredPruner(NoGradNet(), example(), PruneSettings(), ["fc"])


def test_pruner_works_under_no_grad_with_frozen_layers_and_keeps_modes():
    model = TinyNet().train()
    model.stem.requires_grad_(False)
    model.body.eval()
    with torch.no_grad():
        prune_model(model, example(), PruneSettings(ratio=0.5, round_to=None), ["fc"])
    assert model.stem[0].out_channels == 16
    assert model.training and not model.body.training and model.stem[1].training
    assert not model.stem[0].weight.requires_grad and model.body[0].weight.requires_grad


# -- 2:4 sparsity ---------------------------------------------------------------------------------------------

def test_2_4_sparsity_pattern_along_input_channels():
    model = build_model("mobilenet_v3_small", 2, pretrained=False, image_size=SIZE).model
    head_before = model.classifier[3].weight.clone()
    dense = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert sparsity_2_4_fraction(model) < 0.01
    masks = apply_semi_structured_2_4(model, ignored=["classifier.3"])
    assert "classifier.3" not in masks and torch.equal(model.classifier[3].weight, head_before)
    assert "features.0.0" not in masks  # 3 input channels
    assert "features.1.block.0.0" not in masks  # depthwise
    assert "features.1.block.1.fc1" in masks and "classifier.0" in masks
    assert sparsity_2_4_fraction(model, ignored=["classifier.3"]) == 1.0
    assert sparsity_2_4_fraction(model) < 1.0  # the ignored head stays dense
    conv = "features.4.block.3.0"  # a 1x1 projection conv; its weight is [K, C, 1, 1]
    weight, original = model.get_submodule(conv).weight, dense[conv]
    group = original[5, 8:12, 0, 0].abs()
    expected = group >= group.sort().values[2]
    assert torch.equal(weight[5, 8:12, 0, 0] != 0, expected)
    for name, mask in masks.items():
        assert mask.float().mean() == 0.5
        assert torch.equal(model.get_submodule(name).weight, dense[name] * mask)
    with pytest.raises(ConfigError, match="classifer"):
        apply_semi_structured_2_4(model, ignored=["classifer"])
    tiny = TinyNet()  # a 3x3 conv: groups of 4 input channels at each kernel position, not along C*3*3
    original = tiny.body[0].weight.clone()
    apply_semi_structured_2_4(tiny, ignored=[])
    weight = tiny.body[0].weight
    assert ((weight.reshape(32, 8, 4, 3, 3) != 0).sum(dim=2) == 2).all()
    group = original[5, 4:8, 1, 2].abs()
    assert torch.equal(weight[5, 4:8, 1, 2] != 0, group >= group.sort().values[2])


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    _loss(model).backward()
    optimizer.step()


def test_keep_masks_survives_optimizer_steps():
    model = TinyNet()
    masks = apply_semi_structured_2_4(model, ignored=[])
    assert set(masks) == {"body.0", "fc"}  # the stem has 3 input channels
    stale = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    _train_step(model, stale)
    assert sparsity_2_4_fraction(model) < 0.5  # a plain step fills the zeros (and the momentum buffers)
    masks = apply_semi_structured_2_4(model, ignored=[])
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    with keep_masks(model, masks):  # masked gradients: a fresh optimizer never moves the zeros
        for _ in range(3):
            _train_step(model, fresh)
            assert sparsity_2_4_fraction(model) == 1.0
    keeper = keep_masks(model, masks, stale)  # momentum from before the masks: the step post-hook re-zeros
    _train_step(model, stale)
    assert sparsity_2_4_fraction(model) == 1.0
    for p in model.parameters():  # gradients written by hand bypass the gradient hooks
        p.grad = torch.ones_like(p)
    stale.step()
    assert sparsity_2_4_fraction(model) == 1.0
    keeper.remove()
    _train_step(model, stale)
    assert sparsity_2_4_fraction(model) < 0.5


def test_narrow_groups_round_to_a_multiple_not_to_nothing():
    """Torch-Pruning rounds a kept count down, to 0 for a narrow group, and then leaves the group whole:
    Lite0's 32-channel stem at ratio 0.6 and round_to 16 must keep 16, not stay at 32."""
    from edgetl.compress.prune.structured import round_kept

    assert round_kept(19, 32, 16) == 16  # keeps 13 -> 16, not 0
    assert round_kept(58, 96, 16) == 64  # keeps 38 -> 32
    assert round_kept(0, 8, 16) == 0  # narrower than round_to: nothing to remove
    bundle = build_model("efficientnet_lite0", 2, pretrained=True, image_size=SIZE)
    prune_model(bundle.model, example(), PruneSettings(ratio=0.6, round_to=16), bundle.head)
    assert bundle.model.conv_stem.out_channels == 16
    assert bundle.model.blocks[0][0].conv_dw.weight.shape[0] == 16


def test_layer_ratios_override_the_ratio_where_named():
    """A block's name covers its layers, a later pattern wins for the layers it names, and the rest of the
    model keeps the global ratio (MobileNetV3-Small, no rounding: each group keeps exactly its share)."""
    from edgetl.compress.prune.structured import layer_ratio_modules, parse_layer_ratios

    bundle = build_model("mobilenet_v3_small", 2, pretrained=False, image_size=SIZE)
    model = bundle.model
    before = {n: c.out_channels for n, c in convs(model).items()}
    pairs = parse_layer_ratios(["features.9=0.25", "features.9.block.0.0=0.75"])
    ratios = layer_ratio_modules(model, pairs)
    assert list(ratios)[-1] == "features.9.block.0.0" and ratios["features.9"] == 0.25
    prune_model(model, example(), PruneSettings(ratio=0.5, round_to=None, layer_ratios=ratios), bundle.head)
    after = {n: c.out_channels for n, c in convs(model).items()}
    assert after["features.9.block.0.0"] == round(before["features.9.block.0.0"] * 0.25)  # 0.75 removed
    assert after["features.9.block.2.fc1"] == round(before["features.9.block.2.fc1"] * 0.75)  # its block: 0.25
    assert after["features.8.block.0.0"] == round(before["features.8.block.0.0"] * 0.5)  # the global ratio
    assert model.eval()(example(2)).shape == (2, 2)


@pytest.mark.parametrize("items, match", [(["features.9"], "NAME=RATIO"), (["features.9=1"], "got features.9=1"),
                                          (["features.9=x"], "ratio in"), ({"features.9": 0}, "ratio in")])
def test_bad_layer_ratios_are_refused(items, match):
    from edgetl.compress.prune.structured import parse_layer_ratios

    with pytest.raises(ConfigError, match=match):
        parse_layer_ratios(items)


def test_layer_ratio_pattern_matching_nothing_names_close_modules():
    from edgetl.compress.prune.structured import layer_ratio_modules

    bundle = build_model("resnet18", 2, pretrained=False, image_size=SIZE)
    assert layer_ratio_modules(bundle.model, (("layer3.*.conv1", 0.5),)) == {"layer3.0.conv1": 0.5,
                                                                          "layer3.1.conv1": 0.5}
    with pytest.raises(ConfigError, match=r"--layer-ratio 'layer9' matches no module.*Did you mean"):
        layer_ratio_modules(bundle.model, (("layer9", 0.5),))
    with pytest.raises(ConfigError, match="layer_ratios"):
        PruneSettings(layer_ratios={"layer3": 1.0})
