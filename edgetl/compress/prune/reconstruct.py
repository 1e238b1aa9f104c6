"""Least-squares reconstruction of the layers that lost input channels but kept their outputs.

Removing a block's expanded channels leaves the block's last layer (say an inverted residual's
projection ``conv_pwl``, kept whole with ``--keep``) summing fewer inputs: its output drifts from the
teacher's and every later layer inherits the drift. Fine-tuning repairs that slowly and, with a few
hundred images, overfits. Solving each such layer's weights so that, fed the pruned network's own
activations, it reproduces the unpruned layer's outputs (He et al. 2017, "Channel Pruning"; ThiNet) is a
ridge regression with one sample per output *position*: 245 images at 56x56 give 768k samples for a
few hundred unknowns, so it does not overfit, and it needs no labels and no training.

Layers are solved one at a time in forward order, each fed by the already-reconstructed ones, so errors
do not pile up. Conv layers (``groups == 1``; unfolded patches for kernels larger than 1x1) and Linear
layers qualify when the teacher's layer of the same name has the same outputs and more inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)
RIDGE = 1e-3
"""Ridge strength relative to the mean input energy (diagonal of X^T X)."""


class _Stop(Exception):
    """Raised from a forward hook once the wanted activation is captured: the rest of the forward is skipped."""


def reconstructable_layers(student: Any, teacher: Any) -> list[str]:
    """Names of the student's conv (groups 1) / linear layers whose input channels were pruned while their
    outputs were kept, in forward (registration) order."""
    import torch.nn as nn

    originals = dict(teacher.named_modules())
    names = []
    for name, layer in student.named_modules():
        original = originals.get(name)
        if isinstance(layer, nn.Conv2d) and isinstance(original, nn.Conv2d) and layer.groups == 1 == original.groups:
            if layer.out_channels == original.out_channels and layer.in_channels < original.in_channels:
                names.append(name)
        elif isinstance(layer, nn.Linear) and isinstance(original, nn.Linear):
            if layer.out_features == original.out_features and layer.in_features < original.in_features:
                names.append(name)
    return names


def reconstruct_layers(student: Any, teacher: Any, batches: Callable[[], Iterable[Any]], *,
                       ridge: float = RIDGE, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Re-solve every :func:`reconstructable_layers` layer of ``student`` (in place) so that its output on the
    student's own inputs matches ``teacher``'s same-named layer; ``batches()`` yields input batches (called
    once per layer). Both models run in eval mode. Returns per-layer relative errors before and after."""
    names = reconstructable_layers(student, teacher)
    student_modules, teacher_modules = dict(student.named_modules()), dict(teacher.named_modules())
    modes = [(m, m.training) for m in (*student.modules(), *teacher.modules())]
    student.eval(), teacher.eval()
    errors: dict[str, Any] = {}
    try:
        for index, name in enumerate(names):
            layer = student_modules[name]
            gram, cross, target_energy = _normal_equations(layer, teacher_modules[name], student, teacher, batches)
            weight = _ridge_solve(gram, cross, ridge)
            before = _relative_error(gram, cross, target_energy, _current_weight(layer))
            after = _relative_error(gram, cross, target_energy, weight)
            _assign(layer, weight)
            errors[name] = {"before": round(before, 5), "after": round(after, 5)}
            if progress:
                progress(f"reconstructed {name} ({index + 1}/{len(names)}): output error {before:.3f} -> {after:.3f}")
    finally:
        for module, training in modes:
            module.train(training)
    return {"layers": len(names), "errors": errors}


def _normal_equations(layer: Any, original: Any, student: Any, teacher: Any,
                      batches: Callable[[], Iterable[Any]]) -> tuple[Any, Any, float]:
    """X^T X and X^T Y over every output position: X the student layer's inputs (unfolded patches, plus a ones
    column when it has a bias), Y the teacher layer's outputs."""
    import torch

    captured: dict[str, Any] = {}

    def take_input(module: Any, args: tuple[Any, ...]) -> None:
        captured["x"] = args[0]
        raise _Stop

    def take_output(module: Any, args: tuple[Any, ...], output: Any) -> None:
        captured["y"] = output
        raise _Stop

    hooks = [layer.register_forward_pre_hook(take_input), original.register_forward_hook(take_output)]
    gram = cross = None
    energy = 0.0
    try:
        with torch.no_grad():
            for batch in batches():
                for model in (student, teacher):
                    try:
                        model(batch)
                    except _Stop:
                        pass
                x, y = _as_rows(layer, captured["x"]), _outputs_as_rows(captured["y"])
                if gram is None:
                    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
                    cross = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
                gram += x.T @ x
                cross += x.T @ y
                energy += float((y * y).sum())
    finally:
        for hook in hooks:
            hook.remove()
    return gram, cross, energy


def _as_rows(layer: Any, x: Any) -> Any:
    """One row per output position: the layer's receptive field (plus 1 for the bias), float64."""
    import torch
    import torch.nn.functional as F

    if isinstance(layer, torch.nn.Conv2d):
        if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid"):
            rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        else:
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ValueError(f"cannot unfold {layer} (string padding or {layer.padding_mode} padding)")
            patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    rows = rows.double()
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def _outputs_as_rows(y: Any) -> Any:
    return (y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]) if y.dim() == 4 else y.reshape(-1, y.shape[-1])).double()


def _ridge_solve(gram: Any, cross: Any, ridge: float) -> Any:
    import torch

    damping = ridge * float(gram.diagonal().mean()) + 1e-12
    return torch.linalg.solve(gram + damping * torch.eye(gram.shape[0], dtype=gram.dtype), cross)


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
