"""2:4 semi-structured sparsity for TensorRT's sparse tensor-core kernels (Ampere and later, Jetson Orin).

TensorRT's layout (the one NVIDIA apex ASP's ``m4n2_1d`` masks produce): for a conv weight ``[K, C, R, S]``,
for every output channel ``k`` and kernel position ``(r, s)``, every 4 consecutive *input channels*
``C[4i:4i+4]`` hold at most 2 non-zeros; for a Linear ``[out, in]``, every 4 consecutive inputs of a row.
Groups run along the input-channel axis, not along the flattened ``C*R*S`` row, so a layer is eligible when
its input channels per group (``weight.shape[1]``) are a multiple of 4; depthwise convs never are.
TensorRT only uses a sparse kernel where it is faster, and only when the engine is built with the sparse
weights flag (``--sparsity=enable`` / ``BuilderFlag.SPARSE_WEIGHTS``).

Recovery fine-tuning must keep the pattern::

    masks = apply_semi_structured_2_4(model, ignored=bundle.head)
    keeper = keep_masks(model, masks, optimizer)   # before training; the optimizer is optional
    for images, labels in loader:
        loss = criterion(model(images), labels)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        # without an optimizer passed to keep_masks, call keeper.apply() here
    keeper.remove()                                  # applies the masks a last time, drops the hooks
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, ModelError, did_you_mean

GROUP = 4
KEEP = 2


def _eligible_layers(model: Any, ignored: list[str] | tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Conv (not transposed) and Linear layers whose input channels per group are a multiple of 4,
    outside the ``ignored`` modules (and their children)."""
    from torch import nn

    names = [n for n, _ in model.named_modules() if n]
    for name in ignored:
        if name not in names:
            raise ConfigError(f"2:4 sparsity ignored layer {name!r} is not a module of this model."
                              f"{did_you_mean(name, names)}")
    layers = []
    for name, module in model.named_modules():
        if any(name == ig or name.startswith(ig + ".") for ig in ignored):
            continue
        conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
        if (conv or isinstance(module, nn.Linear)) and getattr(module, "weight", None) is not None \
                and module.weight.dim() >= 2 and module.weight.shape[1] % GROUP == 0:
            layers.append((name, module))
    return layers


def _groups(weight: Any) -> Any:
    """``weight`` viewed as ``[..., 4]`` groups along the input-channel axis (dim 1)."""
    moved = weight.movedim(1, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // GROUP, GROUP)


def _mask_2_4(weight: Any) -> Any:
    """Boolean mask keeping the 2 largest-magnitude weights of every group of 4 input channels."""
    import torch

    groups = _groups(weight.detach())
    keep = groups.abs().topk(KEEP, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    moved_shape = weight.movedim(1, -1).shape
    return mask.reshape(moved_shape).movedim(-1, 1).contiguous()


def apply_semi_structured_2_4(model: Any, ignored: list[str]) -> dict[str, Any]:
    """Zero the 2 smallest-magnitude weights of every group of 4 input channels in each eligible layer
    (see the module docstring); returns the boolean keep-masks by module name."""
    import torch

    masks = {}
    with torch.no_grad():
        for name, module in _eligible_layers(model, list(ignored)):
            mask = _mask_2_4(module.weight)
            module.weight.masked_fill_(~mask, 0)
            masks[name] = mask
    return masks


def sparsity_2_4_fraction(model: Any, ignored: list[str] | tuple[str, ...] = ()) -> float:
    """Fraction of the 4-weight groups of eligible layers (outside ``ignored``) with at most 2 non-zeros;
    0.0 when the model has no eligible layer."""
    total = ok = 0
    for _, module in _eligible_layers(model, list(ignored)):
        layer_ok, layer_total = count_2_4_groups(module.weight.detach())
        ok, total = ok + layer_ok, total + layer_total
    return ok / total if total else 0.0


def count_2_4_groups(weight: Any) -> tuple[int, int]:
    """(groups of 4 input channels with at most 2 non-zeros, all groups) of a weight — a torch tensor, or a
    numpy array read from an ONNX file — whose input-channel axis (dim 1) is a multiple of 4."""
    import numpy as np

    moved = weight.movedim(1, -1) if hasattr(weight, "movedim") else np.moveaxis(weight, 1, -1)
    nonzero = (moved.reshape(-1, GROUP) != 0).sum(-1)
    return int((nonzero <= KEEP).sum()), int(nonzero.shape[0])


class MaskKeeper:
    """Keeps weight masks in place while the model trains (see :func:`keep_masks`)."""

    def __init__(self, model: Any, masks: dict[str, Any], optimizer: Any = None) -> None:
        import torch

        modules = dict(model.named_modules())
        self._layers: list[tuple[Any, Any]] = []
        self._by_module: dict[int, Any] = {}
        self._handles: list[Any] = []
        for name, mask in masks.items():
            module = modules.get(name)
            weight = getattr(module, "weight", None)
            if weight is None:
                raise ModelError(f"mask for {name!r}: this model has no such layer with a weight."
                                 f"{did_you_mean(name, [n for n in modules if n])}")
            if tuple(mask.shape) != tuple(weight.shape):
                raise ModelError(f"mask for {name!r} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}")
            mask = mask.to(device=weight.device, dtype=torch.bool)
            self._layers.append((module, mask))
            self._by_module[id(module)] = mask
            self._handles.append(module.register_forward_pre_hook(self._before_forward))
            self._handles.append(weight.register_hook(_grad_masker(mask)))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply()))
        self.apply()

    def apply(self) -> None:
        """Zero the masked weights now (call after ``optimizer.step()`` when no optimizer was given)."""
        import torch

        with torch.no_grad():
            for module, mask in self._layers:
                module.weight.masked_fill_(~_on(mask, module.weight), 0)

    def remove(self) -> None:
        """Apply the masks a last time and remove every hook."""
        self.apply()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before_forward(self, module: Any, args: Any) -> None:
        import torch

        with torch.no_grad():
            module.weight.masked_fill_(~_on(self._by_module[id(module)], module.weight), 0)

    def __enter__(self) -> MaskKeeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def keep_masks(model: Any, masks: dict[str, Any], optimizer: Any = None) -> MaskKeeper:
    """Keep ``masks`` (from :func:`apply_semi_structured_2_4`) during recovery fine-tuning.

    Three mechanisms: the gradient of each masked weight is masked (so SGD, momentum, Adam and weight
    decay leave zeros at zero); a forward pre-hook re-applies the mask before each forward; and with
    ``optimizer``, a step post-hook re-applies it after every ``optimizer.step()``. Without an optimizer,
    call ``keeper.apply()`` after each step if anything else writes the weights. ``keeper.remove()`` (or
    leaving a ``with keep_masks(...)`` block) applies them a last time and removes the hooks.
    """
    return MaskKeeper(model, masks, optimizer)


def _on(mask: Any, tensor: Any) -> Any:
    return mask if mask.device == tensor.device else mask.to(tensor.device)


def _grad_masker(mask: Any) -> Any:
    def hook(grad: Any) -> Any:
        return grad.masked_fill(~_on(mask, grad), 0)
    return hook
