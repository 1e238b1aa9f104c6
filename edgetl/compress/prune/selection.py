"""Channel selection by reconstruction error (ThiNet, Luo et al. 2017; Optimal Brain Surgeon, Hassibi 1993).

Magnitude and Taylor importance score a channel by its own weights (and, for Taylor, a gradient from one
batch). When the layer that consumes the channel is re-solved by least squares afterwards
(:mod:`~edgetl.compress.prune.reconstruct`), what matters is different: how much of that layer's output the
*remaining* channels can still reproduce. Two correlated channels are each "important" by magnitude, but
either can stand in for the other.

For a consumer layer ``y = W x`` (1x1 conv or Linear) and the Gram matrix ``G = X^T X`` of its inputs on
the calibration images, removing input ``j`` and re-solving the rest raises the squared output error by
``||W_j||^2 / P_jj`` (``P = G^-1``; ``W`` the current least-squares solution). Channels are removed greedily,
cheapest first, updating ``W`` and ``P`` after each (rank-one updates, no refits); a channel's score is the
error reached when it is removed (the sum of the costs so far along that order, relative to the layer's
output energy), so scores rank channels in elimination order and add up across the consumers of a shared
channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._tp import channels

RIDGE = 1e-3
"""Ridge strength relative to the mean of the Gram diagonal (keeps P well conditioned)."""


def consumer_layers(model: Any) -> list[str]:
    """The 1x1 conv (groups 1) and Linear layers whose input channels can be scored."""
    import torch.nn as nn

    names = []
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1
                                            and layer.kernel_size == (1, 1)):
            names.append(name)
    return names


def input_grams(model: Any, layers: list[str], batches: Callable[[], Iterable[Any]]) -> dict[str, Any]:
    """``X^T X`` (float64) of each named layer's inputs over every position of every batch: one pass."""
    import torch

    modules = dict(model.named_modules())
    grams: dict[str, Any] = {}

    def hook(name: str) -> Callable[..., None]:
        def take(_m: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            rows = (x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.dim() == 4 else x.reshape(-1, x.shape[-1]))
            rows = rows.double()
            grams[name] = grams.get(name, 0) + rows.T @ rows
        return take

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in layers]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches():
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return grams


def elimination_scores(weight: Any, gram: Any, ridge: float = RIDGE) -> Any:
    """Per input channel: the relative output error once it and every channel eliminated before it are gone
    (greedy order, see the module docstring), strictly increasing along the order. ``weight`` is
    (outputs, inputs)."""
    import torch

    n = gram.shape[0]
    p = torch.linalg.inv(gram + (ridge * float(gram.diagonal().mean()) + 1e-12) * torch.eye(n, dtype=gram.dtype))
    w = weight.detach().reshape(weight.shape[0], n).double().T.clone()  # (inputs, outputs)
    energy = max(float((w * (gram @ w)).sum()), 1e-30)
    alive = torch.ones(n, dtype=torch.bool)
    scores = torch.zeros(n, dtype=torch.float64)
    reached = 0.0
    for step in range(n):
        diag = p.diagonal().clamp_min(1e-30)
        cost = (w * w).sum(1) / diag
        cost[~alive] = float("inf")
        j = int(cost.argmin())
        reached += max(float(cost[j]), 0.0) / energy
        scores[j] = reached + 1e-9 * step  # ties (exact duplicates cost 0) keep the elimination order
        column = p[:, j].clone()
        w -= torch.outer(column / diag[j], w[j])
        p -= torch.outer(column, column) / diag[j]
        alive[j] = False
        w[j] = 0
    return scores


class ReconstructionImportance:
    """A Torch-Pruning importance: a group's channels scored by :func:`elimination_scores` of the layers that
    consume them (by module name; summed when several do); groups no such layer consumes fall back to
    ``fallback``. ``grams`` are the consumers' input Gram matrices (:func:`input_grams`) on the model being
    pruned; a consumer's scores are computed the first time a group needs them, from its weights then."""

    def __init__(self, grams: dict[str, Any], fallback: Any, ridge: float = RIDGE) -> None:
        self.grams, self.fallback, self.ridge = grams, fallback, ridge
        self.scores: dict[str, Any] = {}

    def __call__(self, group: Any) -> Any:
        import torch

        graph = group._DG
        total = None
        root = len(group[0].idxs)
        for dep, idxs in group:
            module = dep.target.module
            name = graph._module2name.get(module, "")
            gram = self.grams.get(name)
            if gram is None or graph.is_out_channel_pruning_fn(dep.handler) or len(idxs) != root \
                    or gram.shape[0] != channels(module, "in"):
                continue
            if name not in self.scores:
                self.scores[name] = elimination_scores(module.weight, gram, self.ridge).float()
            picked = self.scores[name][torch.as_tensor([int(getattr(i, "idx", i)) for i in idxs])]
            total = picked if total is None else total + picked
        return self.fallback(group) if total is None else total

