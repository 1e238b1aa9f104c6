"""Q/DQ ONNX graphs: walking, surgery, and the placement rules TensorRT needs to fuse an INT8 model.

Pure ``onnx`` + numpy (no ONNX Runtime), shared by :mod:`.ort_qdq`. The rules (FIELD-NOTES, "Q/DQ that
TensorRT accepts and fuses"; NVIDIA Model-Optimizer's ONNX INT8 path):

1. standard-domain QuantizeLinear/DequantizeLinear only; zero points int8 and 0; scales positive
   constant initializers; every DQ dequantizes a Q (float weights stay initializers, then Q -> DQ);
2. weights per output channel (Conv axis 0, ConvTranspose axis 1, Gemm axis 0 with ``transB=1`` else 1,
   MatMul the last axis: ONNX Runtime's defaults), activations per tensor;
3. a DQ feeds only the data/weight input of a weighted op (Conv, ConvTranspose, Gemm, MatMul) or the
   identity input of a residual Add: no bias DQ, no Q/DQ on weighted-op outputs or non-weighted ops;
4. residual Add (one input straight from a Conv, the other an identity branch X): X comes through a DQ
   and nothing sits between the Conv and the Add, so TensorRT fuses Conv+Add;
5. layers kept in float have no DQ input.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FUSIBLE_OPS = ("Conv", "ConvTranspose")
"""Ops TensorRT fuses with a following residual Add (Model-Optimizer's "backbone")."""
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
STANDARD_DOMAINS = ("", "ai.onnx")


class GraphIndex:
    """Producers, consumers and initializers of one graph, and walks through Q -> DQ pairs."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.graph = graph
        self.init = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, k))
        self.outputs = {o.name for o in graph.output}
        self.inputs = [i.name for i in graph.input if i.name not in self.init]

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.init[name]) if name in self.init else None

    def dq(self, tensor: str) -> Any:
        """The DequantizeLinear producing ``tensor``, or None."""
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def raw(self, tensor: str) -> str:
        """``tensor`` with any DQ <- Q chain in front of it looked through: the float tensor it quantizes."""
        seen = 0
        while (dq := self.dq(tensor)) is not None and seen < 8:
            q = self.producer.get(dq.input[0])
            tensor = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]
            seen += 1
        return tensor

    def source(self, tensor: str) -> Any:
        """The node computing the float value of ``tensor`` (Q/DQ looked through), or None."""
        return self.producer.get(self.raw(tensor))

    def depths(self) -> dict[str, int]:
        """Longest path (in non-Q/DQ nodes) from the graph inputs to each node, keyed by its first output."""
        depth: dict[str, int] = {}
        for node in self.graph.node:  # ONNX graphs are topologically sorted
            parents = [depth.get(self.producer[t].output[0], 0) for t in node.input if t in self.producer]
            depth[node.output[0]] = max(parents, default=0) + (0 if node.op_type in QDQ_OPS else 1)
        return depth


def attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def weight_axis(node: Any, rank: int) -> int:
    """The output-channel axis of a weighted op's weight (ONNX Runtime's per-channel defaults)."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return rank - 1
    return 0


def name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (layers are addressed by node name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{k}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def keep_float_nodes(model: Any, tokens: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Node names for ``keep_float`` tokens, and the tokens that name no node.

    ``first-conv``: the Conv(s) fed directly by a graph input; ``classifier``: the last Gemm/MatMul (the
    last Conv when there is none); anything else: an ONNX node name."""
    index = GraphIndex(model)
    nodes = list(model.graph.node)
    names: list[str] = []
    unknown: list[str] = []
    by_name = {n.name for n in nodes}
    for token in tokens:
        if token == "first-conv":
            names += [n.name for n in nodes if n.op_type in FUSIBLE_OPS and n.input[0] in index.inputs]
        elif token == "classifier":
            heads = [n for n in nodes if n.op_type in ("Gemm", "MatMul")] or [n for n in nodes if n.op_type == "Conv"]
            names += [heads[-1].name] if heads else []
        elif token in by_name:
            names.append(token)
        else:
            unknown.append(token)
    return list(dict.fromkeys(names)), unknown


def residual_adds(model: Any) -> list[tuple[Any, int, int, str]]:
    """``(add, fused_input, identity_input, conv_name)`` for every residual Add, Q/DQ looked through.

    An Add of two computed tensors where one comes straight from a Conv is residual unless that Conv is an
    ancestor of the other input too (ConvNeXt-style, not a skip connection). When both come from Convs the
    one on the longer path is fused (Model-Optimizer's choice). Adds of a constant or a graph input are not
    residual."""
    index = GraphIndex(model)
    depth = index.depths()
    found = []
    for add in model.graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        raws = [index.raw(t) for t in add.input]
        sources = [index.producer.get(r) for r in raws]
        if raws[0] == raws[1] or any(s is None or s.op_type == "Constant" for s in sources):
            continue
        convs = [s.op_type in FUSIBLE_OPS for s in sources]
        if convs[0] and convs[1]:
            fused = 0 if depth[sources[0].output[0]] > depth[sources[1].output[0]] else 1
        elif convs[0] or convs[1]:
            fused = 0 if convs[0] else 1
            if _is_ancestor(index, depth, sources[fused], sources[1 - fused]):
                continue
        else:
            continue
        found.append((add, fused, 1 - fused, sources[fused].name))
    return found


def _is_ancestor(index: GraphIndex, depth: dict[str, int], ancestor: Any, node: Any) -> bool:
    stack, seen, target = [node], set(), ancestor.output[0]
    while stack:
        current = stack.pop()
        key = current.output[0]
        if key == target:
            return True
        if key in seen or depth[key] < depth[target]:
            continue
        seen.add(key)
        stack += [index.producer[t] for t in current.input if t in index.producer]
    return False


def quantized_layers(model: Any) -> list[str]:
    """Weighted nodes whose data input comes through a DQ, in graph order."""
    index = GraphIndex(model)
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and n.input and index.dq(n.input[0]) is not None]


# -- surgery ------------------------------------------------------------------------------

def arrange(model: Any, layers: set[str]) -> None:
    """Put the Q/DQ where TensorRT wants them, in place: a DQ keeps feeding only the data/weight inputs of
    ``layers`` and the identity input of residual Adds after one of them; every other consumer (kept-float
    or reverted layers, non-weighted ops, the Conv side of a residual Add) reads the float tensor again.
    Q/DQ left unused are dropped."""
    index = GraphIndex(model)
    identity = {add.name: ident for add, _, ident, conv in residual_adds(model) if conv in layers}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        for k, tensor in enumerate(node.input):
            if index.dq(tensor) is None:
                continue
            if (node.name in layers and k in (0, 1)) or identity.get(node.name) == k:
                continue
            node.input[k] = index.raw(tensor)
    prune(model)


def prune(model: Any) -> None:
    """Drop Q/DQ nodes nothing reads, their now-unused scale/zero-point initializers, stale value_info."""
    graph = model.graph
    while True:
        used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            break
        params = {t for n in dead for t in n.input[1:]}
        for node in dead:
            graph.node.remove(node)
        used = {t for n in graph.node for t in n.input}
        for init in [i for i in graph.initializer if i.name in params and i.name not in used]:
            graph.initializer.remove(init)
    known = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for info in [v for v in graph.value_info if v.name not in known]:
        graph.value_info.remove(info)


def toposort(model: Any) -> None:
    """Sort the graph's nodes topologically, keeping the existing order where it is already valid."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(t in ready for t in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


# -- the rules ----------------------------------------------------------------------------

def check_qdq_rules(model: Any, keep_float: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every violation of the rules in the module docstring, human-readable; [] when the graph is fine.
    ``keep_float``: node names that must have no DQ input (rule 5; not checkable otherwise)."""
    index = GraphIndex(model)
    bad: list[str] = []
    nodes = list(model.graph.node)
    for node in nodes:
        if node.domain not in STANDARD_DOMAINS:
            bad.append(f"{node.op_type} {node.name!r} is in domain {node.domain!r}: standard ops only")
    qdq = [n for n in nodes if n.op_type in QDQ_OPS]
    for node in qdq:
        bad += _check_params(index, node)
    for node in qdq:
        if node.op_type == "DequantizeLinear":
            q = index.producer.get(node.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                bad.append(f"DequantizeLinear {node.name!r} does not dequantize a QuantizeLinear output "
                           f"(weights stay float initializers followed by Q -> DQ)")
            elif not _same_params(index, q, node):
                bad.append(f"QuantizeLinear {q.name!r} and DequantizeLinear {node.name!r} use different "
                           f"scales, zero points or axes")
        else:
            for consumer, _ in index.consumers[node.output[0]]:
                if consumer.op_type != "DequantizeLinear":
                    bad.append(f"QuantizeLinear {node.name!r} feeds {consumer.op_type} {consumer.name!r}, not a DQ")
        if node.output[0] in index.outputs:
            bad.append(f"{node.op_type} {node.name!r} produces the graph output {node.output[0]!r}")
    residual = {add.name: (add, fused, ident, conv) for add, fused, ident, conv in residual_adds(model)}
    layers = set(quantized_layers(model))
    for node in nodes:
        if node.op_type in WEIGHTED_OPS:
            bad += _check_weighted(index, node, node.name in set(keep_float))
    for dq in (n for n in qdq if n.op_type == "DequantizeLinear"):
        for consumer, k in index.consumers[dq.output[0]]:
            if consumer.op_type in WEIGHTED_OPS and k in (0, 1) or consumer.name in residual:
                continue  # weighted inputs: _check_weighted; residual Adds: below
            what = "the bias of" if consumer.op_type in WEIGHTED_OPS else "non-weighted op"
            bad.append(f"DequantizeLinear {dq.name!r} feeds {what} {consumer.op_type} {consumer.name!r} "
                       f"(input {k}): only the data and weight inputs of Conv/Gemm/MatMul take Q/DQ")
    for add, fused, ident, conv in residual.values():
        if index.dq(add.input[fused]) is not None:
            bad.append(f"Q/DQ between Conv {conv!r} and residual Add {add.name!r}: TensorRT cannot fuse them")
        if conv in layers and index.dq(add.input[ident]) is None:
            bad.append(f"identity input {add.input[ident]!r} of residual Add {add.name!r} does not come "
                       f"through a DQ (Conv {conv!r} is INT8)")
    return bad


def _check_params(index: GraphIndex, node: Any) -> list[str]:
    bad = []
    where = f"{node.op_type} {node.name!r}"
    scale = index.array(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        bad.append(f"{where}: scale is not a constant initializer")
    elif scale.dtype.kind != "f" or not np.all(np.isfinite(scale)) or not np.all(scale > 0) or scale.ndim > 1:
        bad.append(f"{where}: scale must be positive finite floats (per tensor or one per channel)")
    if len(node.input) < 3 or not node.input[2]:
        bad.append(f"{where}: no zero point (it would default to uint8)")
    else:
        zero = index.array(node.input[2])
        if zero is None:
            bad.append(f"{where}: zero point is not a constant initializer")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            bad.append(f"{where}: zero point must be int8 0 (symmetric), got {zero.dtype} {zero.ravel()[:4]}")
    if attr(node, "block_size", 0):
        bad.append(f"{where}: blocked quantization (block_size) is not supported by TensorRT for INT8 Conv")
    return bad


def _same_params(index: GraphIndex, q: Any, dq: Any) -> bool:
    for k in (1, 2):
        a, b = (index.array(n.input[k]) if len(n.input) > k else None for n in (q, dq))
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            return False
    return attr(q, "axis", 1) == attr(dq, "axis", 1) or index.array(q.input[1]).size == 1


def _check_weighted(index: GraphIndex, node: Any, keep_float: bool) -> list[str]:
    bad = []
    where = f"{node.op_type} {node.name!r}"
    data_q = index.dq(node.input[0]) if node.input else None
    weight_q = index.dq(node.input[1]) if len(node.input) > 1 else None
    if keep_float and (data_q is not None or weight_q is not None):
        bad.append(f"{where} is kept in float but has a DQ input")
    if (data_q is None) != (weight_q is None):
        bad.append(f"{where} is half quantized: {'data' if data_q is not None else 'weight'} input only")
    if len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        if index.dq(bias) is not None:
            bad.append(f"{where}: bias is quantized (no int32 bias DQ; it stays a float initializer)")
    if data_q is not None and (scale := index.array(data_q.input[1])) is not None and scale.size != 1:
        bad.append(f"{where}: data input quantized per channel (activations are per tensor)")
    if weight_q is None:
        return bad
    weight = index.raw(node.input[1])
    values, scale = index.array(weight), index.array(weight_q.input[1])
    if values is None or scale is None:  # a computed B of a MatMul: an activation, per tensor
        if scale is not None and scale.size != 1:
            bad.append(f"{where}: activation weight input quantized per channel")
        return bad
    axis = weight_axis(node, values.ndim)
    channels = values.shape[axis]
    q = index.producer.get(weight_q.input[0])
    q_axis = attr(q, "axis", 1) if q is not None else None
    if scale.size != channels or (channels > 1 and (q_axis if q_axis is None else q_axis % values.ndim) != axis):
        kind = "per tensor" if scale.size == 1 else f"with {scale.size} scales on axis {q_axis}"
        bad.append(f"{where}: weight {weight!r} quantized {kind}; per channel wants {channels} scales on axis {axis}")
    return bad
