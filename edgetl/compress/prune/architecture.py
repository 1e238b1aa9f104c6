"""The shape of a pruned model as plain JSON data, so a checkpoint holds only tensors and built-in types and
loads with ``torch.load(weights_only=True)`` (Torch-Pruning's own ``tp.state_dict`` pickles modules).

Save::

    torch.save({"state_dict": model.state_dict(), "architecture": architecture_record(model), ...}, path)

Load::

    bundle = build_model(name, num_classes, pretrained=False, image_size=...)
    apply_architecture(bundle.model, checkpoint["architecture"])
    bundle.model.load_state_dict(checkpoint["state_dict"])          # strict

The record is keyed by module name; each entry holds the module's type name, the attributes pruning
changes (conv channels and groups, Linear features, norm sizes, ...) and the shape of every parameter and
persistent buffer the module owns directly (BatchNorm running statistics included). Every module owning a
tensor is recorded, so layers of any type (SE blocks, LayerNorm, custom layers) are covered.
"""

from __future__ import annotations

from typing import Any

from ...errors import ModelError, did_you_mean


def _shape_attributes(module: Any) -> tuple[str, ...]:
    """The attributes that describe a module's channel counts (what pruning rewrites besides tensors)."""
    from torch import nn

    table = ((nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
             (nn.Linear, ("in_features", "out_features")),
             (nn.modules.batchnorm._NormBase, ("num_features",)),
             (nn.GroupNorm, ("num_groups", "num_channels")),
             (nn.LayerNorm, ("normalized_shape",)),
             (nn.PReLU, ("num_parameters",)),
             (nn.Embedding, ("num_embeddings", "embedding_dim")),
             (nn.MultiheadAttention, ("embed_dim", "kdim", "vdim", "num_heads", "head_dim")))
    for cls, attrs in table:
        if isinstance(module, cls):
            return attrs
    return ()


def _own_tensors(module: Any) -> dict[str, Any]:
    """Parameters and persistent buffers owned by ``module`` itself (what its state dict entries hold)."""
    tensors = {k: v for k, v in module._parameters.items() if v is not None}
    skip = getattr(module, "_non_persistent_buffers_set", set())
    tensors.update({k: v for k, v in module._buffers.items() if v is not None and k not in skip})
    return tensors


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str, float)):
        return value
    return int(value)


def architecture_record(model: Any) -> dict[str, Any]:
    """``{module name: {"type", "attrs", "tensors"}}`` for every module owning a tensor or channel attribute;
    only str/int/float/bool/list/dict inside (``json.dumps`` works on it)."""
    record: dict[str, Any] = {}
    for name, module in model.named_modules():
        attrs = {a: _jsonable(getattr(module, a)) for a in _shape_attributes(module)
                 if getattr(module, a, None) is not None}
        tensors = {k: [int(d) for d in v.shape] for k, v in _own_tensors(module).items()}
        if attrs or tensors:
            record[name] = {"type": type(module).__name__, "attrs": attrs, "tensors": tensors}
    return record


def apply_architecture(model: Any, record: dict[str, Any]) -> None:
    """Reshape a freshly built model in place to the recorded architecture: attributes set, and each
    parameter or buffer whose shape differs replaced by an uninitialised tensor of the recorded shape (same
    dtype, device and ``requires_grad``) for ``load_state_dict`` to fill. Forward pre-hooks and optimizer
    state that refer to the old tensors are not carried over: apply before building the optimizer.

    A module name the model lacks, a type that differs, or a malformed entry is a :class:`ModelError`.
    """
    if not isinstance(record, dict):
        raise ModelError(f"a pruned architecture record is a mapping of module names, not {type(record).__name__}")
    modules = dict(model.named_modules())
    for name, entry in record.items():
        module = modules.get(name)
        if module is None:
            raise ModelError(f"the pruned architecture names a module {name!r} this model does not have."
                             f"{did_you_mean(str(name), [n for n in modules if n])} Was it recorded from another "
                             "backbone?")
        if not isinstance(entry, dict) or not isinstance(entry.get("tensors", {}), dict) \
                or not isinstance(entry.get("attrs", {}), dict):
            raise ModelError(f"the pruned architecture entry for {name!r} is malformed: {entry!r:.120}")
        if entry.get("type") != type(module).__name__:
            raise ModelError(f"the pruned architecture records {name!r} as a {entry.get('type')}, but this model's "
                             f"{name!r} is a {type(module).__name__}: it was recorded from another backbone")
        for attr, value in entry.get("attrs", {}).items():
            if attr not in _shape_attributes(module):
                raise ModelError(f"the pruned architecture sets {name}.{attr}, which is not a channel attribute "
                                 f"of {type(module).__name__}")
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for tensor_name, shape in entry.get("tensors", {}).items():
            _reshape(module, name, tensor_name, shape)


def _reshape(module: Any, name: str, tensor_name: str, shape: Any) -> None:
    import torch

    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise ModelError(f"the pruned architecture gives {name}.{tensor_name} the shape {shape!r}, "
                         "not a list of sizes")
    if module._parameters.get(tensor_name) is not None:
        old = module._parameters[tensor_name]
        if list(old.shape) != shape:
            module._parameters[tensor_name] = torch.nn.Parameter(
                torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)
    elif module._buffers.get(tensor_name) is not None:
        old = module._buffers[tensor_name]
        if list(old.shape) != shape:
            module._buffers[tensor_name] = torch.empty(shape, dtype=old.dtype, device=old.device)
    else:
        raise ModelError(f"the pruned architecture records a tensor {name}.{tensor_name} that this model's "
                         f"{type(module).__name__} does not have")
