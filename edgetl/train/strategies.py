"""Which parameters train when: linear probe, full fine-tuning, gradual unfreezing from the top.

Backbone parameters are grouped by block in forward order: from timm's ``group_matcher`` where the
model has one (timm's own definition of its stages), else from the module tree (top-level children,
sequences expanded).
"""

from __future__ import annotations

import math
from typing import Any

STRATEGIES = ("linear-probe", "full", "gradual")


def layer_groups(model: Any, heads: list[str]) -> list[list[Any]]:
    """Backbone parameters in forward order, grouped by block; the head's parameters are left out."""
    head_ids = {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    if hasattr(model, "group_matcher"):
        groups = _timm_groups(model, head_ids)
        if len(groups) > 1:
            return groups
    groups = []
    for _, child in model.named_children():
        parts = list(child.children()) if len(list(child.children())) > 1 and type(child).__name__ in (
            "Sequential", "ModuleList") else [child]
        for part in parts:
            params = [p for p in part.parameters() if id(p) not in head_ids]
            if params:
                groups.append(params)
    return groups


def _timm_groups(model: Any, head_ids: set[int]) -> list[list[Any]]:
    from timm.models import group_parameters

    named = dict(model.named_parameters())
    stages = group_parameters(model, model.group_matcher(coarse=True))
    groups = [[named[n] for n in names if id(named[n]) not in head_ids] for _, names in sorted(stages.items())]
    return [g for g in groups if g]


class Unfreezer:
    """Sets ``requires_grad`` per epoch for a strategy; the head always trains."""

    def __init__(self, strategy: str, groups: list[list[Any]], head_params: list[Any], epochs: int,
                 probed_head: bool = False) -> None:
        self.strategy, self.groups, self.head_params = strategy, groups, head_params
        self.epochs, self.probed_head = epochs, probed_head

    def trainable_groups(self, epoch: int) -> int:
        """How many backbone groups (from the top) train in ``epoch`` (0-based)."""
        total = len(self.groups)
        if self.strategy == "full":
            return total
        if self.strategy == "linear-probe":
            return 0
        ramp = max(1, math.ceil(self.epochs / 2))  # all unfrozen by half-way
        elapsed = epoch + (1 if self.probed_head else 0)  # a probed head needs no head-only epoch
        return min(total, math.ceil(total * elapsed / ramp))

    def apply(self, epoch: int) -> int:
        n = self.trainable_groups(epoch)
        for i, params in enumerate(self.groups):
            trainable = i >= len(self.groups) - n
            for p in params:
                if p.is_floating_point():  # a quantizer's integer state (NNCF) never trains
                    p.requires_grad_(trainable)
        for p in self.head_params:
            p.requires_grad_(True)
        return n


def make_optimizer(model: Any, head_params: list[Any], *, strategy: str, optimizer: str, lr: float,
                   backbone_lr_scale: float, weight_decay: float) -> Any:
    """AdamW or SGD with the head at ``lr`` and (unless probing) the backbone at ``lr * backbone_lr_scale``."""
    import torch

    head_ids = {id(p) for p in head_params}
    groups = [{"params": head_params, "lr": lr}]
    if strategy != "linear-probe":
        groups.append({"params": [p for p in model.parameters() if id(p) not in head_ids and p.is_floating_point()],
                       "lr": lr * backbone_lr_scale})
    if optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    return torch.optim.AdamW(groups, weight_decay=weight_decay)
