"""Quantization-aware training for the Q/DQ (TensorRT) path: the PyTorch model trained under fake-quant that
emulates the PTQ Q/DQ ONNX, then written back into the float ONNX and quantized by the same code as PTQ.

One placement policy for PTQ and QAT, by construction: the sites and activation scales are read from the PTQ
model that :func:`.ort_qdq.quantize_qdq` made of the run's float ONNX (per-channel symmetric weights,
per-tensor symmetric activations, zero point 0, no bias Q/DQ, BatchNorm folded into the convs); the trained
weights go back into that float ONNX and :func:`.ort_qdq.quantize_qdq` runs again with the same activation
ranges (no new calibration), so the QAT file has the PTQ file's Q/DQ nodes, only other weights.

What the emulation leaves out: the Q/DQ that the residual-Add rule puts on an Add's identity input (TensorRT
reads that tensor in INT8; in training it stays float). The count is logged.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ModelError
from .qat import QATEngine

log = logging.getLogger(__name__)
QMIN, QMAX = -128, 127
"""INT8 as ``QuantizeLinear`` saturates (weight scales put every weight within +-127)."""
MATCH_TOLERANCE = 1e-4
"""Largest |ONNX - PyTorch| weight difference, relative to the weight's largest value, for one layer to be
the other (the exporter folds BatchNorm in its own order of operations)."""


@dataclass
class QDQPlan:
    """What fake-quant a PyTorch model gets, read from a PTQ Q/DQ model: per quantized layer (module name)
    the scale of its input activation; its weight is fake-quantized too."""

    input_scales: dict[str, float] = field(default_factory=dict)
    residual_inputs: list[str] = field(default_factory=list)
    """Layers whose quantized input also feeds a residual Add (the Add reads it in INT8 too): the fake-quant
    goes on the outermost module that takes that input, so the shortcut sees it as well."""
    not_emulated: int = 0
    """Activation Q/DQs of the PTQ model that no layer's input fake-quant reproduces."""

    @property
    def weights(self) -> list[str]:
        """The layers whose weight is fake-quantized: those with a quantized input (quantize_qdq quantizes both)."""
        return sorted(self.input_scales)


# -- BatchNorm folding ----------------------------------------------------------------------

def fold_batchnorms(model: Any, example: Any) -> int:
    """Fold every BatchNorm fed by a Conv's output into that Conv (eval statistics), in place; the BatchNorm
    becomes an identity (timm's BatchNormAct2d keeps its dropout and activation). Returns how many."""
    import torch
    import torch.nn as nn

    outputs: dict[int, tuple[Any, Any]] = {}
    pairs: list[tuple[Any, Any]] = []

    def after_conv(module, _inputs, output):
        outputs[id(output)] = (output, module)

    def before_bn(module, inputs):
        found = outputs.get(id(inputs[0]))
        if found is not None:
            pairs.append((found[1], module))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    names = {id(m): n for n, m in model.named_modules()}
    for conv, bn in pairs:
        _fold(conv, bn)
        parent, _, attr = names[id(bn)].rpartition(".")
        identity = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") and hasattr(bn, "drop") else nn.Identity()
        setattr(model.get_submodule(parent) if parent else model, attr, identity)
    return len(pairs)


def _fold(conv: Any, bn: Any) -> None:
    import torch

    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
        conv.weight.copy_(conv.weight * factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        folded = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(folded.clone())
        else:
            conv.bias.copy_(folded)


# -- matching ONNX layers to PyTorch modules --------------------------------------------------

def weighted_modules(model: Any) -> dict[str, Any]:
    import torch.nn as nn

    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _module_weight(module: Any) -> np.ndarray:
    return module.weight.detach().cpu().numpy()


def match_layers(onnx_weights: dict[str, np.ndarray], modules: dict[str, Any]) -> dict[str, str]:
    """ONNX node name -> module name, each layer found by its weight (the closest of the same shape, within
    :data:`MATCH_TOLERANCE`); a :class:`ModelError` when a layer has no such twin or two share one."""
    candidates: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for name, module in modules.items():
        weight = _module_weight(module)
        candidates.setdefault(weight.shape, []).append((name, weight))
    matched: dict[str, str] = {}
    for node, weight in onnx_weights.items():
        best, error = None, np.inf
        for name, twin in candidates.get(weight.shape, []):
            diff = float(np.max(np.abs(twin - weight))) / max(float(np.max(np.abs(weight))), 1e-12)
            if diff < error:
                best, error = name, diff
        if best is None or error > MATCH_TOLERANCE:
            raise ModelError(f"QAT: ONNX layer {node} {list(weight.shape)} has no PyTorch twin (closest differs by "
                             f"{error:.2g}): the ONNX export does not come from this checkpoint; export it again")
        matched[node] = best
    twice = {m for m in matched.values() if list(matched.values()).count(m) > 1}
    if twice:
        raise ModelError(f"QAT: PyTorch layer(s) {sorted(twice)} match more than one ONNX layer")
    return matched


def layer_weights(model: Any) -> dict[str, tuple[np.ndarray, str, str | None]]:
    """Weighted Conv/Gemm nodes of a float ONNX model: node name -> (weight as PyTorch holds it, weight
    initializer, bias initializer or None)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    return {node.name: (_torch_layout(node, numpy_helper.to_array(inits[weight])), weight, bias)
            for node, weight, bias in _weighted_nodes(model, inits)}


def _weighted_nodes(model: Any, inits: dict[str, Any]) -> Any:
    """(node, weight initializer, bias initializer or None) of every Conv/Gemm with an initializer weight."""
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) >= 2 and node.input[1] in inits:
            yield node, node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] in inits else None


def _torch_layout(node: Any, weight: np.ndarray) -> np.ndarray:
    """An ONNX weight as PyTorch holds it, and back (its own inverse): a Gemm without ``transB`` stores
    ``[in, out]``, a Linear ``[out, in]``."""
    if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0):
        return weight.T
    return weight


def qdq_layer_weights(qdq: Any) -> dict[str, np.ndarray]:
    """Quantized Conv/Gemm nodes of a Q/DQ model: node name -> its float weight (behind weight Q -> DQ)."""
    from .qdq_graph import GraphIndex, quantized_layers

    index, quantized = GraphIndex(qdq), set(quantized_layers(qdq))
    out = {}
    for node in qdq.graph.node:
        if node.name not in quantized or node.op_type not in ("Conv", "Gemm"):
            continue
        weight = index.array(index.raw(node.input[1]))
        if weight is None:
            raise ModelError(f"QAT: the weight of {node.name} is not a float initializer behind Q -> DQ")
        out[node.name] = _torch_layout(node, weight)
    return out


def plan_from_qdq(qdq: Any, modules: dict[str, Any]) -> QDQPlan:
    """The fake-quant that emulates ``qdq`` (a PTQ model of this network) on ``modules``."""
    from .qdq_graph import GraphIndex

    index = GraphIndex(qdq)
    matched = match_layers(qdq_layer_weights(qdq), modules)
    plan = QDQPlan()
    nodes = {n.name: n for n in qdq.graph.node}
    fed = set()
    for node_name, module in matched.items():
        dq = index.dq(nodes[node_name].input[0])
        plan.input_scales[module] = float(index.array(dq.input[1]).reshape(-1)[0])
        fed.add(dq.name or dq.output[0])
        if any(consumer.op_type == "Add" for consumer, _ in index.consumers[dq.output[0]]):
            plan.residual_inputs.append(module)
    plan.not_emulated = sum(1 for n in qdq.graph.node if n.op_type == "DequantizeLinear"
                            and index.array(index.raw(n.output[0])) is None and (n.name or n.output[0]) not in fed)
    return plan


# -- fake-quant on the PyTorch model ----------------------------------------------------------

@functools.cache
def _weight_fake_quant_class() -> type:
    import torch

    class WeightFakeQuant(torch.nn.Module):
        """A parametrization: the weight as the Q/DQ model holds it (per output channel, symmetric, scale
        max|w| / 127, as ONNX Runtime computes it), straight-through gradients."""

        def forward(self, weight):
            amax = weight.detach().abs().flatten(1).amax(1)
            scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
            zero = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, QMIN, QMAX)

    return WeightFakeQuant


def _input_fake_quant(module, inputs):
    import torch

    return (torch.fake_quantize_per_tensor_affine(inputs[0], float(module.qat_input_scale), 0, QMIN, QMAX),
            *inputs[1:])


def attach_fake_quant(model: Any, plan: QDQPlan, example: Any) -> list[Any]:
    """Put ``plan``'s fake-quant on ``model`` in place; returns the hooks (kept until :func:`detach_fake_quant`).
    The input scales are buffers (``qat_input_scale``): they are saved with the weights. ``example``: an input
    batch, to find the modules that take a residual layer's input (:attr:`QDQPlan.residual_inputs`)."""
    import torch
    from torch.nn.utils import parametrize

    owners = _outermost_owners(model, plan.residual_inputs, example)
    hooks = []
    for name in plan.weights:
        parametrize.register_parametrization(model.get_submodule(name), "weight", _weight_fake_quant_class()())
    for name, scale in sorted(plan.input_scales.items()):
        for site in dict.fromkeys([name, owners.get(name, name)]):  # idempotent: the layer's own is kept
            module = model.get_submodule(site)
            module.register_buffer("qat_input_scale", torch.tensor(scale, dtype=torch.float32))
            hooks.append(module.register_forward_pre_hook(_input_fake_quant))
    return hooks


def _outermost_owners(model: Any, names: list[str], example: Any) -> dict[str, str]:
    """For each module in ``names``, its outermost ancestor whose input is the very same tensor (the block
    whose shortcut reads it), found by one forward pass; absent when there is none."""
    import torch

    if not names:
        return {}
    seen: dict[str, Any] = {}
    hooks = [m.register_forward_pre_hook(lambda m, inputs, n=n: seen.setdefault(n, inputs[0] if inputs else None))
             for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    owners = {}
    for name in names:
        parts = name.split(".")
        for k in range(1, len(parts)):
            ancestor = ".".join(parts[:k])
            if seen.get(ancestor) is not None and seen.get(ancestor) is seen.get(name):
                owners[name] = ancestor
                break
    return owners


def detach_fake_quant(model: Any, hooks: list[Any]) -> None:
    """The float model again: the trained weights (not their quantized values), no hooks, no scale buffers."""
    from torch.nn.utils import parametrize

    for hook in hooks:
        hook.remove()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if "qat_input_scale" in module._buffers:
            del module._buffers["qat_input_scale"]


def layer_map(float_onnx: Any, modules: dict[str, Any]) -> dict[str, str]:
    """ONNX Conv/Gemm node -> module name for every weighted node of the float ONNX model."""
    return match_layers({n: w for n, (w, _, _) in layer_weights(float_onnx).items()}, modules)


def with_weights(float_onnx: Any, modules: dict[str, Any], mapping: dict[str, str]) -> Any:
    """A copy of ``float_onnx`` whose Conv/Gemm weights and biases are those of ``modules`` now (``mapping``:
    :func:`layer_map`, taken before training changed them)."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(float_onnx)
    inits = {i.name: i for i in model.graph.initializer}
    for node, weight_name, bias_name in _weighted_nodes(model, inits):
        module = modules[mapping[node.name]]
        weight = _module_weight(module).astype(np.float32)
        inits[weight_name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(_torch_layout(node, weight)),
                                                            weight_name))
        bias = module.bias.detach().cpu().numpy().astype(np.float32) if module.bias is not None else None
        if bias_name is not None:
            inits[bias_name].CopyFrom(numpy_helper.from_array(
                bias if bias is not None else np.zeros(weight.shape[0], np.float32), bias_name))
        elif bias is not None and np.any(bias):
            raise ModelError(f"QAT: {node.name} has no bias in the ONNX model but its PyTorch twin has one")
    return model


# -- the engine -------------------------------------------------------------------------------

def resolved_settings(settings: Any, backend: Any, float_model: Any, calib: list, spec: Any) -> Any:
    """``settings`` with one calibration method: ``auto`` is chosen as PTQ chooses it (the same search)."""
    import dataclasses

    from .ort_qdq import AUTO

    if settings.calibration != AUTO:
        return settings
    backend.quantize(float_model, calib, spec, settings)
    method, _, point = backend.search.chosen.partition(" ")
    return dataclasses.replace(settings, calibration=method, percentile=float(point) if point else settings.percentile)


class QDQTraining(QATEngine):
    """QAT for the Q/DQ (TensorRT) path: see the module docstring."""

    name = "qdq-fake-quant"

    def prepare(self, model: Any, float_model: Any, calib: list, spec: Any, settings: Any, backend: Any) -> Any:
        import torch

        from .ort_qdq import quantize_qdq

        self.settings = resolved_settings(settings, backend, float_model, calib, spec)
        self.float_model, self.spec = float_model, spec
        self.folded = fold_batchnorms(model, torch.zeros(1, 3, spec.input_size, spec.input_size))
        modules = weighted_modules(model)
        self.mapping = layer_map(float_model, modules)
        ranges: list[str] = []
        ptq = quantize_qdq(float_model, calib, spec, self.settings, record=ranges)
        self.ranges, self.plan = ranges[0], plan_from_qdq(ptq, modules)
        trained = {id(p) for name in self.mapping.values() for p in modules[name].parameters()}
        frozen = [p for p in model.parameters() if id(p) not in trained]
        for param in frozen:  # nothing the ONNX model would not receive back
            param.requires_grad_(False)
        self.hooks = attach_fake_quant(model, self.plan, torch.zeros(1, 3, spec.input_size, spec.input_size))
        log.info("QAT: %d BatchNorm(s) folded, %d layer(s) fake-quantized as the PTQ Q/DQ model (%s calibration)%s",
                 self.folded, len(self.plan.weights), self.settings.calibration,
                 f", {self.plan.not_emulated} Q/DQ not emulated" if self.plan.not_emulated else "")
        return model

    def export(self, model: Any) -> Any:
        from .ort_qdq import quantize_qdq

        detach_fake_quant(model, self.hooks)
        trained = with_weights(self.float_model, weighted_modules(model), self.mapping)
        return quantize_qdq(trained, [], self.spec, self.settings, ranges=self.ranges)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "folded_batchnorms": self.folded, "fake_quantized_layers": len(self.plan.weights),
                "not_emulated_qdq": self.plan.not_emulated, "calibration": _label(self.settings)}


def _label(settings: Any) -> str:
    return f"percentile {settings.percentile:g}" if settings.calibration == "percentile" else settings.calibration
