"""MACs and parameters of a model, by two independent counters that disagree for known reasons.

- ``torch_pruning.utils.count_ops_and_params`` hooks modules by exact type (``MODULES_MAPPING``): a conv
  is ``k*k*Cin/groups*Cout`` multiply-accumulates per output pixel *plus one op per output for its bias*,
  and it adds elementwise ops: BatchNorm 2 per element, ReLU/ReLU6/PReLU/ELU/LeakyReLU/GELU 1, pooling
  1 per input element, Upsample 1 per output element. Subclasses get nothing: timm's ``Conv2dSame``
  (the stride-2 convs of tf_efficientnet_lite0) and ``BatchNormAct2d`` count 0, nor do Hardswish,
  Hardsigmoid, SiLU or functional ops (``F.adaptive_avg_pool2d`` in SE blocks).
- ``torch.utils.flop_counter.FlopCounterMode`` counts ATen ops: convolution and matmul/addmm/bmm only,
  2 flops per multiply-accumulate, biases and elementwise ops excluded. Half of it is the usual "MACs".

Measured at 224 px, 2 classes: ResNet18 agrees within 0.5 %; MobileNetV3-small's Torch-Pruning count is
~6.5 % higher (BatchNorm, ReLU, pooling); Lite0's is ~3 % lower (5 Conv2dSame layers skipped, more than the
ReLU6/pooling it adds). Both fall by about the same fraction under pruning.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

AGREE_WITHIN = 0.02


def count_macs(model: Any, example_inputs: Any) -> dict[str, Any]:
    """MACs per image by both counters, the parameter count, whether the counters agree within 2 %,
    and (when they do not) a sentence saying why. The model's train/eval modes are left as they were."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ._tp import as_forward_args, import_torch_pruning

    tp = import_torch_pruning()
    args = as_forward_args(example_inputs)
    batch = int(args[0].shape[0]) if isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else 1
    modes = {m: m.training for m in model.modules()}
    try:
        tp_macs, params, layer_ops, _ = tp.utils.count_ops_and_params(model, args, layer_wise=True)
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        for module, training in modes.items():
            module.training = training
    fc_macs = counter.get_total_flops() / 2 / batch
    agree = abs(tp_macs - fc_macs) <= AGREE_WITHIN * max(tp_macs, fc_macs, 1.0)
    reason = None if agree else _explain(tp, model, float(tp_macs), layer_ops,
                                         _per_module_macs(model, counter, batch), fc_macs)
    return {"macs": int(round(tp_macs)), "params": int(params), "macs_flop_counter": int(round(fc_macs)),
            "agree": bool(agree), "reason": reason}


def _per_module_macs(model: Any, counter: Any, batch: int) -> dict[str, float]:
    """FlopCounterMode's MACs per module name (its keys are ``RootClass.dotted.name``)."""
    prefix = type(model).__name__
    result = {}
    for key, ops in counter.get_flop_counts().items():
        if key == prefix:
            result[""] = sum(ops.values()) / 2 / batch
        elif key.startswith(prefix + "."):
            result[key[len(prefix) + 1:]] = sum(ops.values()) / 2 / batch
    return result


def _explain(tp: Any, model: Any, tp_macs: float, layer_ops: dict[Any, Any], fc_by_name: dict[str, float],
             fc_macs: float) -> str:
    """Why the two counts differ, with the amounts (per image) behind each cause."""
    from torch import nn

    mapped = set(getattr(tp.utils.op_counter, "MODULES_MAPPING", {}))
    compute = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    counted = [(n, m) for n, m in compute if layer_ops.get(m)]
    skipped = [(n, m) for n, m in compute if not layer_ops.get(m) and fc_by_name.get(n, 0) > 0]
    tp_compute = sum(float(layer_ops[m]) for _, m in counted)
    bias_ops = tp_compute - sum(fc_by_name.get(n, 0.0) for n, _ in counted)
    extra = Counter()
    for module in model.modules():
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and type(module) in mapped:
            extra[type(module).__name__] += float(layer_ops.get(module) or 0)
    extra_ops = sum(extra.values())
    parts = [f"FlopCounterMode counts only convolution/matmul multiply-accumulates ({_m(fc_macs)})"]
    listed = ", ".join(f"{name} {_m(v)}" for name, v in extra.most_common(4) if v)
    if extra_ops or bias_ops > 0.5:
        parts.append(f"Torch-Pruning ({_m(tp_macs)}) adds {_m(extra_ops + max(bias_ops, 0.0))} of elementwise ops "
                     f"({listed + ', ' if listed else ''}bias additions {_m(max(bias_ops, 0.0))})")
    if skipped:
        types = ", ".join(sorted({type(m).__name__ for _, m in skipped}))
        names = ", ".join(n for n, _ in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        parts.append(f"but counts nothing for {len(skipped)} conv/linear layers of types missing from its table "
                     f"({types}: {names}), {_m(sum(fc_by_name.get(n, 0.0) for n, _ in skipped))} MACs")
    trivial = ("Identity", "Dropout", "Flatten", "Sequential", "ModuleList", "ModuleDict")
    uncounted = sorted({type(m).__name__ for m in model.modules()
                        if type(m) not in mapped and not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
                        and type(m).__name__ not in trivial
                        and (not list(m.children()) or list(m.parameters(recurse=False)))})
    if uncounted:
        parts.append(f"and nothing for {', '.join(uncounted)} layers")
    outside = fc_macs - sum(fc_by_name.get(n, 0.0) for n, _ in compute)
    if outside > max(1.0, 0.001 * fc_macs):
        parts.append(f"FlopCounterMode also sees {_m(outside)} MACs of functional convolutions/matmuls outside "
                     "Conv/Linear modules, which Torch-Pruning does not")
    return "; ".join(parts) + "."


def _m(value: float) -> str:
    """``12.3M`` style amounts for the explanation."""
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def standard_macs(counted: dict[str, Any]) -> float:
    """The standard MAC count (conv and matmul multiply-accumulates, torch's FlopCounterMode / 2); Torch-Pruning's
    own counter is reported beside it (it skips some conv subclasses and adds BatchNorm and activations)."""
    return counted.get("macs_flop_counter") or counted["macs"]


def prune_report(before: dict[str, Any], after: dict[str, Any], top1: tuple[float, float, float, float],
                 steps: list[dict[str, Any]], sparsity: dict[str, Any] | None, checkpoint: Any,
                 parent_checkpoint: Any) -> dict[str, Any]:
    """What pruning did: parameters, MACs (both counters), file size, top-1 of the parent, right after pruning,
    after the repair (least squares or BatchNorm statistics), and after recovery."""
    parent_top1, pruned_top1, repaired_top1, recovered_top1 = top1
    return {
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": standard_macs(before), "macs_after": standard_macs(after),
        "macs_reduction": round(1 - standard_macs(after) / standard_macs(before), 4),
        "macs_torch_pruning_before": before["macs"], "macs_torch_pruning_after": after["macs"],
        "macs_counters_agree": bool(before.get("agree") and after.get("agree")),
        "macs_counters_note": after.get("reason") or before.get("reason"),
        "checkpoint_bytes_before": parent_checkpoint.stat().st_size, "checkpoint_bytes_after": checkpoint.stat().st_size,
        "top1_parent": parent_top1, "top1_pruned": pruned_top1, "top1_repaired": repaired_top1,
        "top1_recovered": recovered_top1,
        "drop_points_vs_parent": round(100 * (parent_top1 - recovered_top1), 4), "steps": steps,
        **({"sparsity_2_4": sparsity} if sparsity else {})}
