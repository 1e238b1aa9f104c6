"""Quantize within an accuracy budget, whatever the backend: PTQ, check the drop, fall back, report.

The drop is measured against the PyTorch float model (the run's reference). A backend that corrects
its own INT8 model (NNCF's accuracy control) measures against its own float model, so the budget is
moved to that baseline first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import QuantizerBackend

log = logging.getLogger(__name__)


@dataclass
class Evaluator:
    """How the calling toolchain measures an in-memory model: a runner for it, its top-1, its latency."""

    runner: Callable[[Any], Any]
    top1: Callable[[Any], float]
    latency_ms: Callable[[Any], float | None]


@dataclass
class QuantizeOutcome:
    model: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    """calib_images, ptq_top1, ptq_drop_points and, when it ran, accuracy_control."""


def quantize_within_budget(backend: QuantizerBackend, float_model: Any, calib: list[tuple[Path, int]], spec: Any,
                           settings: Any, evaluate: Evaluator, *, float_top1: float, max_drop: float | None,
                           accuracy_control: bool, max_reverted_layers: int | None, images: Any, labels: Any,
                           layer_precisions: Callable[[Any], dict[str, str]] | None = None) -> QuantizeOutcome:
    """Plain PTQ; if it misses ``max_drop`` (points) and ``accuracy_control``, the backend's correction.
    The better of the two models is returned with what happened."""
    model = backend.quantize(float_model, calib, spec, settings)
    ptq_runner = evaluate.runner(model)
    ptq_top1 = evaluate.top1(ptq_runner)
    metrics: dict[str, Any] = {"calib_images": len(calib), "ptq_top1": ptq_top1,
                               "ptq_drop_points": round(100 * (float_top1 - ptq_top1), 4)}
    if max_drop is None or metrics["ptq_drop_points"] <= max_drop or not accuracy_control:
        return QuantizeOutcome(model, metrics)
    log.info("plain INT8 drops %.2f points (budget %.2f): running %s accuracy control",
             metrics["ptq_drop_points"], max_drop, backend.name)
    backend_float_top1 = evaluate.top1(evaluate.runner(float_model))
    budget = max(0.0, max_drop / 100 - (float_top1 - backend_float_top1))
    controlled = backend.accuracy_control(float_model, calib, spec, images, labels, budget, settings,
                                          max_reverted_layers)
    if controlled is None:
        return QuantizeOutcome(model, metrics)
    ac_runner = evaluate.runner(controlled)
    ac_top1 = evaluate.top1(ac_runner)
    reverted: list[str] = []
    if layer_precisions is not None:
        ptq_layers, ac_layers = layer_precisions(ptq_runner), layer_precisions(ac_runner)
        reverted = sorted(n for n, p in ac_layers.items() if p != "int8" and ptq_layers.get(n) == "int8")
    ptq_ms, ac_ms = evaluate.latency_ms(ptq_runner), evaluate.latency_ms(ac_runner)
    metrics["accuracy_control"] = {
        "top1": ac_top1, "drop_points": round(100 * (float_top1 - ac_top1), 4), "reverted_to_float": reverted,
        "ptq_latency_p50_ms": ptq_ms, "latency_p50_ms": ac_ms,
        "slowdown_vs_ptq": round(ac_ms / ptq_ms, 3) if ptq_ms and ac_ms else None, "backend_max_drop": budget}
    log.info("accuracy control: top-1 %.2f%% with %d layer(s) in float, p50 %.2f -> %.2f ms", 100 * ac_top1,
             len(reverted), ptq_ms or float("nan"), ac_ms or float("nan"))
    return QuantizeOutcome(controlled if ac_top1 >= ptq_top1 else model, metrics)
