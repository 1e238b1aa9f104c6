"""Least-squares reconstruction of a pruned network, layer by layer, towards the unpruned one.

Removing a block's expanded channels leaves the block's last layer (say an inverted residual's
projection ``conv_pwl``, kept whole with ``--keep``) summing fewer inputs: its output drifts from the
teacher's and every later layer inherits the drift. Fine-tuning repairs that slowly and, with a few
hundred images, overfits. Solving each layer's weights so that, fed the pruned network's own
activations, it reproduces the unpruned layer's outputs (He et al. 2017, "Channel Pruning"; ThiNet) is a
ridge regression with one sample per output *position*: 245 images at 56x56 give 768k samples for a
few hundred unknowns, so it does not overfit, and it needs no labels and no training.

Layers are solved one at a time in forward order, each fed by the already-reconstructed ones, so errors
do not pile up. Which layers:

- ``scope="inputs"``: conv (``groups == 1``; unfolded patches for kernels larger than 1x1) and Linear layers
  whose outputs were all kept and whose inputs were pruned.
- ``scope="all"``: also every other conv / Linear layer after the first pruned one, fitted at the output
  channels it kept (``kept_outputs``: the teacher's index of each, from :class:`StructuredPruner`) given
  its drifted inputs: an expansion 1x1 whose inputs were kept but come from repaired layers, and each
  channel of a depthwise conv (a tiny regression per channel). Layers named in ``skip`` (classifier heads)
  are left as they are unless they lost input channels: a few hundred images would over-fit a classifier
  that only drifted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)
RIDGE = 1e-3
"""Ridge strength relative to the mean input energy (diagonal of X^T X)."""
SCOPES = ("inputs", "all")


def reconstructable_layers(student: Any, teacher: Any) -> list[str]:
    """Names of the student's conv (groups 1) / linear layers whose input channels were pruned while their
    outputs were kept, in forward (registration) order."""
    return [name for name, _, _ in plan_layers(student, teacher, scope="inputs")]


def plan_layers(student: Any, teacher: Any, *, scope: str = "inputs", kept_outputs: dict[str, list[int]] | None = None,
                skip: Iterable[str] = ()) -> list[tuple[str, str, list[int] | None]]:
    """``(name, "dense" | "depthwise", teacher output index or None for all)`` for the layers ``scope`` re-solves
    (see the module docstring), in registration order."""
    import torch.nn as nn

    from ...errors import ConfigError

    if scope not in SCOPES:
        raise ConfigError(f"reconstruction scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    originals, kept_outputs, skip = dict(teacher.named_modules()), kept_outputs or {}, set(skip)
    plan: list[tuple[str, str, list[int] | None]] = []
    started = False
    for name, layer in student.named_modules():
        original = originals.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or type(original) is not type(layer):
            continue
        if not unfoldable(layer) and not (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1)):
            continue
        shape, original_shape = _io(layer), _io(original)
        pruned_inputs = shape[0] < original_shape[0]
        started = started or shape != original_shape
        if not started or (name in skip and not pruned_inputs):
            continue
        kind = "depthwise" if _depthwise(layer) and _depthwise(original) else "dense"
        if kind == "dense" and (getattr(layer, "groups", 1) != 1 or getattr(original, "groups", 1) != 1):
            continue
        index = kept_outputs.get(name)
        if index is None and shape[1] != original_shape[1]:
            continue  # outputs pruned, but which ones is unknown
        if scope == "inputs" and not (kind == "dense" and pruned_inputs and shape[1] == original_shape[1]):
            continue
        plan.append((name, kind, None if index is None or len(index) == original_shape[1] else list(index)))
    return plan


def reconstruct_layers(student: Any, teacher: Any, batches: Callable[[], Iterable[Any]], *,
                       ridge: float = RIDGE, scope: str = "inputs", kept_outputs: dict[str, list[int]] | None = None,
                       skip: Iterable[str] = (), progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Re-solve the layers :func:`plan_layers` picks (in place) so that each one's output on the student's own
    inputs matches ``teacher``'s same-named layer (at the output channels it kept); ``batches()`` yields the
    calibration batches, the same ones at every call. Both models run in eval mode. Returns per-layer relative
    output errors before and after."""
    from .feeding import Feeder

    plan = plan_layers(student, teacher, scope=scope, kept_outputs=kept_outputs, skip=skip)
    modules = dict(student.named_modules())
    modes = [(m, m.training) for m in (*student.modules(), *teacher.modules())]
    student.eval(), teacher.eval()
    feeder = Feeder(student, teacher, batches)
    errors: dict[str, Any] = {}
    try:
        for number, (name, kind, index) in enumerate(plan, 1):
            layer = modules[name]
            solve = _solve_depthwise if kind == "depthwise" else _solve_dense
            before, after = solve(layer, feeder.pairs(name), index, ridge)
            errors[name] = {"before": round(before, 5), "after": round(after, 5)}
            if progress:
                progress(f"reconstructed {name} ({number}/{len(plan)}): output error {before:.3f} -> {after:.3f}")
    finally:
        feeder.release()
        for module, training in modes:
            module.train(training)
    return {"layers": len(plan), "scope": scope, "errors": errors}


# -- dense layers (conv groups 1, Linear) ----------------------------------------------------------------

def _solve_dense(layer: Any, pairs: Iterable[tuple[Any, Any]], index: list[int] | None, ridge: float) -> tuple[float, float]:
    import torch

    gram = cross = None
    energy = 0.0
    for x, y in pairs:
        x, y = _as_rows(layer, x), _outputs_as_rows(y, index)
        if gram is None:
            gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            cross = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
        gram += x.T @ x
        cross += x.T @ y
        energy += float((y * y).sum())
    weight = _ridge_solve(gram, cross, ridge)
    before = _relative_error(gram, cross, energy, _current_weight(layer))
    after = _relative_error(gram, cross, energy, weight)
    _assign(layer, weight)
    return before, after


def _as_rows(layer: Any, x: Any) -> Any:
    """One row per output position: the layer's receptive field (plus 1 for the bias), float64."""
    import torch
    import torch.nn.functional as F

    if isinstance(layer, torch.nn.Conv2d):
        if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid"):
            rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        else:
            x, padding = _padded(layer, x)
            patches = F.unfold(x, layer.kernel_size, layer.dilation, padding, layer.stride)
            rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    rows = rows.double()
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def _padded(layer: Any, x: Any) -> tuple[Any, Any]:
    """``x`` padded as the layer pads it, and the padding left for ``unfold``: zero numeric padding, or
    TensorFlow's "SAME" padding of timm's ``Conv2dSame`` (asymmetric, from the input size)."""
    import torch.nn.functional as F

    if _same_padding(layer):
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(layer.kernel_size), reversed(layer.stride),
                                 reversed(layer.dilation)):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), 0
    if not unfoldable(layer):
        from ...errors import ModelError

        raise ModelError(f"cannot reconstruct {layer}: only zero, numeric padding can be unfolded")
    return x, layer.padding


def _same_padding(layer: Any) -> bool:
    return type(layer).__name__ == "Conv2dSame" and tuple(layer.padding) == (0, 0)


def unfoldable(layer: Any) -> bool:
    """Whether a conv's input patches can be rebuilt: plain ``Conv2d`` (zero, numeric padding) or timm's
    ``Conv2dSame``; a subclass with another forward of its own cannot be trusted."""
    import torch.nn as nn

    if not isinstance(layer, nn.Conv2d):
        return True
    if _same_padding(layer):
        return True
    return type(layer).forward is nn.Conv2d.forward and not isinstance(layer.padding, str) \
        and layer.padding_mode == "zeros"


def _outputs_as_rows(y: Any, index: list[int] | None) -> Any:
    if index is not None:
        y = y[:, index]
    return (y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]) if y.dim() == 4 else y.reshape(-1, y.shape[-1])).double()


def _ridge_solve(gram: Any, cross: Any, ridge: float) -> Any:
    import torch

    damping = ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1) + 1e-12
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    return torch.linalg.solve(gram + damping[..., None, None] * eye, cross)


def _current_weight(layer: Any) -> Any:
    """The layer's weights as the (inputs [+1], outputs) matrix :func:`_ridge_solve` returns."""
    import torch

    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).double().T
    if layer.bias is not None:
        weight = torch.cat([weight, layer.bias.detach().double()[None]], dim=0)
    return weight


def _relative_error(gram: Any, cross: Any, energy: float, weight: Any) -> float:
    """||XW - Y||^2 / ||Y||^2 from the normal equations (no second pass over the data)."""
    residual = float((weight * (gram @ weight)).sum() - 2 * (weight * cross).sum()) + energy
    return max(residual, 0.0) / max(energy, 1e-30)


def _assign(layer: Any, solution: Any) -> None:
    import torch

    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(solution[-1].to(layer.bias.dtype))
            solution = solution[:-1]
        layer.weight.copy_(solution.T.reshape(layer.weight.shape).to(layer.weight.dtype))


# -- depthwise convs: one small regression per channel ---------------------------------------------------

def _depthwise(layer: Any) -> bool:
    import torch.nn as nn

    return isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels == layer.out_channels > 1


def _solve_depthwise(layer: Any, pairs: Iterable[tuple[Any, Any]], index: list[int] | None,
                     ridge: float) -> tuple[float, float]:
    """Per channel c: the k*k taps (plus bias) mapping the student's channel c to the teacher's output channel
    ``index[c]``: batched normal equations of shape (channels, k*k [+1], k*k [+1])."""
    import torch

    gram = cross = None
    energy = 0.0
    for x, y in pairs:
        y = (y if index is None else y[:, index]).flatten(2).double()
        step = max(1, int(2e7 // max(1, x[0].numel() * layer.kernel_size[0] * layer.kernel_size[1])))
        for start in range(0, x.shape[0], step):
            rows = _depthwise_rows(layer, x[start:start + step])  # (n, C, taps, positions)
            target = y[start:start + step]
            g = torch.einsum("nckl,ncjl->ckj", rows, rows)
            c = torch.einsum("nckl,ncl->ck", rows, target)
            gram, cross = (g, c) if gram is None else (gram + g, cross + c)
            energy += float((target * target).sum())
    weight = _ridge_solve(gram, cross[..., None], ridge)[..., 0]  # (C, taps)
    current = layer.weight.detach().reshape(layer.out_channels, -1).double()
    if layer.bias is not None:
        current = torch.cat([current, layer.bias.detach().double()[:, None]], dim=1)

    def error(w: Any) -> float:
        residual = float(torch.einsum("ck,ckj,cj->", w, gram, w) - 2 * (w * cross).sum()) + energy
        return max(residual, 0.0) / max(energy, 1e-30)

    before, after = error(current), error(weight)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(weight[:, -1].to(layer.bias.dtype))
            weight = weight[:, :-1]
        layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight.dtype))
    return before, after


def _depthwise_rows(layer: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    x, padding = _padded(layer, x.double())
    patches = F.unfold(x, layer.kernel_size, layer.dilation, padding, layer.stride)
    rows = patches.reshape(x.shape[0], x.shape[1], -1, patches.shape[-1])
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1, rows.shape[-1])], dim=2)
    return rows


def _io(layer: Any) -> tuple[int, int]:
    import torch.nn as nn

    return (layer.in_features, layer.out_features) if isinstance(layer, nn.Linear) else (layer.in_channels,
                                                                                          layer.out_channels)
