"""The generic per-layer fallback (:func:`sensitivity_fallback` via :func:`quantize_within_budget`) against a
fake backend whose accuracy depends on which layers stayed in float: it must find the fewest of the ranked
layers that meet the budget, report every attempt honestly, and keep the best model when none does."""

from __future__ import annotations

from typing import Any

import pytest

from edgetl.compress.quantize import Evaluator, QuantizerBackend, quantize_within_budget

LAYERS = [f"conv{i}" for i in range(10)]


class FakeBackend(QuantizerBackend):
    """A model is the frozenset of layers left in float; each layer costs ``harm[layer]`` top-1 when quantized."""

    name = "fake"

    def __init__(self, harm: dict[str, float], ranking: list[str] | None) -> None:
        self.harm, self.ranking, self.reverted_calls = harm, ranking, []

    def check(self) -> None:
        pass

    def settings(self, block: dict, source: str = "") -> Any:
        return None

    def quantize(self, model, calib, spec, settings):
        return frozenset()

    def rank_layers(self, float_model, model, images):
        return self.ranking

    def revert_layers(self, model, names):
        self.reverted_calls.append(list(names))
        return frozenset(model | set(names))


def run(harm: dict[str, float], max_drop: float, ranking: Any = "by-harm", max_layers=None, float_top1=0.90):
    backend = FakeBackend(harm, sorted(harm, key=lambda n: -harm[n]) if ranking == "by-harm" else ranking)
    top1 = lambda model: float_top1 - sum(h for n, h in harm.items() if n not in model)  # noqa: E731
    evaluate = Evaluator(runner=lambda model: model, top1=top1, latency_ms=lambda r: 1.0 + 0.1 * len(r))
    outcome = quantize_within_budget(backend, "float", [], None, None, evaluate, float_top1=float_top1,
                                     max_drop=max_drop, accuracy_control=True, max_reverted_layers=max_layers,
                                     images=list(range(40)), labels=None)
    return outcome, backend


def test_fewest_sensitive_layers_that_meet_the_budget():
    harm = {name: 0.001 for name in LAYERS} | {"conv3": 0.02, "conv7": 0.015, "conv1": 0.01}
    outcome, backend = run(harm, max_drop=1.0)  # PTQ drops 5.2 points
    report = outcome.metrics["accuracy_control"]
    assert outcome.metrics["ptq_drop_points"] == pytest.approx(5.2)
    # conv3+conv7 leave 1.7 points, +conv1 leaves 0.7: three layers, not the four the doubling reached
    assert report["reverted_to_float"] == ["conv3", "conv7", "conv1"] and outcome.model == {"conv3", "conv7", "conv1"}
    assert report["met_budget"] and report["drop_points"] == pytest.approx(0.7)
    assert set(report["tried"]) == {"0", "1", "2", "3", "4"} and report["method"] == "sensitivity-fallback"
    assert report["latency_p50_ms"] > report["ptq_latency_p50_ms"]


def test_budget_met_by_ptq_runs_no_fallback():
    outcome, backend = run({n: 0.001 for n in LAYERS}, max_drop=2.0)
    assert "accuracy_control" not in outcome.metrics and backend.reverted_calls == []


def test_unreachable_budget_keeps_the_best_model_and_says_so():
    harm = {name: 0.003 for name in LAYERS}  # 3 points spread evenly
    outcome, _ = run(harm, max_drop=0.1, max_layers=4)
    report = outcome.metrics["accuracy_control"]
    assert not report["met_budget"] and len(report["reverted_to_float"]) == 4  # the most that was allowed
    assert report["drop_points"] == pytest.approx(1.8)
    assert max(int(k) for k in report["tried"]) == 4


def test_a_bad_ranking_is_not_hidden():
    harm = {name: 0.0 for name in LAYERS} | {"conv9": 0.03}
    outcome, _ = run(harm, max_drop=0.5, ranking=LAYERS, max_layers=4)  # conv9 ranked last, never reverted
    report = outcome.metrics["accuracy_control"]
    assert not report["met_budget"] and report["drop_points"] == pytest.approx(3.0)
    assert report["reverted_to_float"] == []  # nothing helped: plain PTQ kept (fewest layers on ties)
    assert outcome.model == frozenset()


def test_backend_without_ranking_returns_plain_ptq():
    outcome, backend = run({"conv0": 0.05}, max_drop=1.0, ranking=None)
    assert "accuracy_control" not in outcome.metrics and outcome.model == frozenset()
    assert outcome.metrics["ptq_drop_points"] == pytest.approx(5.0)
