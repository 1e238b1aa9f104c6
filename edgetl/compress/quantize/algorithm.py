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
RANKING_IMAGES = 32
"""Val images used to rank layers by INT8 sensitivity for the per-layer fallback."""


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
    """method (ptq, ptq+fallback(k layers), accuracy-control), calibration, calib_images, ptq_top1,
    ptq_drop_points and, when it ran, accuracy_control."""


def quantize_within_budget(backend: QuantizerBackend, float_model: Any, calib: list[tuple[Path, int]], spec: Any,
                           settings: Any, evaluate: Evaluator, *, float_top1: float, max_drop: float | None,
                           accuracy_control: bool, max_reverted_layers: int | None, images: Any, labels: Any,
                           layer_precisions: Callable[[Any], dict[str, str]] | None = None) -> QuantizeOutcome:
    """Plain PTQ; if it misses ``max_drop`` (points) and ``accuracy_control``, the backend's own correction
    (NNCF) or else the generic per-layer fallback. The better model is returned with what happened."""
    model = backend.quantize(float_model, calib, spec, settings)
    ptq_runner = evaluate.runner(model)
    ptq_top1 = evaluate.top1(ptq_runner)
    metrics: dict[str, Any] = {"method": "ptq", "calibration": backend.calibration_method(settings),
                               "calib_images": len(calib), "ptq_top1": ptq_top1,
                               "ptq_drop_points": round(100 * (float_top1 - ptq_top1), 4)}
    if backend.calibration_report() is not None:
        metrics["calibration_search"] = backend.calibration_report()
    if max_drop is None or metrics["ptq_drop_points"] <= max_drop or not accuracy_control:
        return QuantizeOutcome(model, metrics)
    own = type(backend).accuracy_control is not QuantizerBackend.accuracy_control
    log.info("plain INT8 drops %.2f points (budget %.2f): %s", metrics["ptq_drop_points"], max_drop,
             f"running {backend.name} accuracy control" if own else "leaving the most sensitive layers in float")
    controlled = None
    if own:
        backend_float_top1 = evaluate.top1(evaluate.runner(float_model))
        budget = max(0.0, max_drop / 100 - (float_top1 - backend_float_top1))
        controlled = backend.accuracy_control(float_model, calib, spec, images, labels, budget, settings,
                                              max_reverted_layers)
    if controlled is not None:
        return _report_controlled(model, controlled, ptq_runner, ptq_top1, float_top1, evaluate, metrics, budget,
                                  layer_precisions)
    ranking = backend.rank_layers(float_model, model, images[:RANKING_IMAGES])
    if ranking is None:
        return QuantizeOutcome(model, metrics)
    return sensitivity_fallback(backend, model, ranking, evaluate, float_top1=float_top1, max_drop=max_drop,
                                ptq_top1=ptq_top1, ptq_runner=ptq_runner, metrics=metrics,
                                max_layers=max_reverted_layers)


def _report_controlled(model: Any, controlled: Any, ptq_runner: Any, ptq_top1: float, float_top1: float,
                       evaluate: Evaluator, metrics: dict[str, Any], budget: float,
                       layer_precisions: Callable[[Any], dict[str, str]] | None) -> QuantizeOutcome:
    """The backend's own accuracy-controlled model, measured and compared with plain PTQ."""
    ac_runner = evaluate.runner(controlled)
    ac_top1 = evaluate.top1(ac_runner)
    reverted: list[str] = []
    if layer_precisions is not None:
        ptq_layers, ac_layers = layer_precisions(ptq_runner), layer_precisions(ac_runner)
        reverted = sorted(n for n, p in ac_layers.items() if p != "int8" and ptq_layers.get(n) == "int8")
    ptq_ms, ac_ms = evaluate.latency_ms(ptq_runner), evaluate.latency_ms(ac_runner)
    metrics["accuracy_control"] = {
        "method": "backend", "top1": ac_top1, "drop_points": round(100 * (float_top1 - ac_top1), 4),
        "reverted_to_float": reverted, "ptq_latency_p50_ms": ptq_ms, "latency_p50_ms": ac_ms,
        "slowdown_vs_ptq": round(ac_ms / ptq_ms, 3) if ptq_ms and ac_ms else None, "backend_max_drop": budget}
    log.info("accuracy control: top-1 %.2f%% with %d layer(s) in float, p50 %.2f -> %.2f ms", 100 * ac_top1,
             len(reverted), ptq_ms or float("nan"), ac_ms or float("nan"))
    if ac_top1 >= ptq_top1:
        metrics["method"] = "accuracy-control"
        return QuantizeOutcome(controlled, metrics)
    return QuantizeOutcome(model, metrics)


def sensitivity_fallback(backend: QuantizerBackend, model: Any, ranking: list[str], evaluate: Evaluator, *,
                         float_top1: float, max_drop: float, ptq_top1: float, ptq_runner: Any,
                         metrics: dict[str, Any], max_layers: int | None = None) -> QuantizeOutcome:
    """Per-layer fallback for backends without their own: leave the ``k`` most sensitive layers in float for
    k = 1, 2, 4, ... until the drop is within ``max_drop`` points, then bisect down to the fewest such layers.
    Returns the best model tried (plain PTQ when nothing beat it) and records every attempt."""
    limit = min(len(ranking), max_layers if max_layers is not None else len(ranking))
    tried: dict[int, float] = {0: ptq_top1}

    def top1_with(k: int) -> float:
        if k not in tried:
            tried[k] = evaluate.top1(evaluate.runner(backend.revert_layers(model, ranking[:k])))
            log.info("  %d layer(s) in float: top-1 %.2f%%", k, 100 * tried[k])
        return tried[k]

    def meets(k: int) -> bool:
        return 100 * (float_top1 - top1_with(k)) <= max_drop

    k, met = 1, None
    while k <= limit and met is None:
        met, k = (k if meets(k) else None), k * 2
    if met is None and limit and limit not in tried:
        met = limit if meets(limit) else None
    if met is not None:  # the fewest layers in (met/2, met] that still meet the budget
        low, high = met // 2, met
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if meets(mid) else (mid, high)
        chosen = high
    else:
        chosen = max(tried, key=lambda n: (tried[n], -n))  # the best tried, fewest layers on ties
    best = backend.revert_layers(model, ranking[:chosen]) if chosen else model
    ptq_ms = evaluate.latency_ms(ptq_runner)
    best_ms = evaluate.latency_ms(evaluate.runner(best)) if chosen else ptq_ms
    metrics["accuracy_control"] = {
        "method": "sensitivity-fallback", "top1": tried[chosen], "drop_points": round(100 * (float_top1 - tried[chosen]), 4),
        "met_budget": met is not None, "reverted_to_float": ranking[:chosen], "ranking": ranking[:max(chosen, 10)],
        "tried": {str(n): t for n, t in sorted(tried.items())}, "ptq_latency_p50_ms": ptq_ms,
        "latency_p50_ms": best_ms, "slowdown_vs_ptq": round(best_ms / ptq_ms, 3) if ptq_ms and best_ms else None}
    if chosen:
        metrics["method"] = f"ptq+fallback({chosen} layer{'s' if chosen > 1 else ''})"
    log.info("per-layer fallback: %d layer(s) left in float, top-1 %.2f%% (%s the budget)", chosen,
             100 * tried[chosen], "meets" if met is not None else "misses")
    return QuantizeOutcome(best, metrics)
