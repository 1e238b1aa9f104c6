"""Accuracy: the one top-1 path (every artifact's logits on every evaluation image) and, against the float
reference, the paired top-1 drop with a bootstrap 95% interval and an exact McNemar test."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics import classification_metrics

if TYPE_CHECKING:
    from .config import BenchConfig
    from .measure import Measured


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def accuracy_drop(ref_correct: np.ndarray, correct: np.ndarray, resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Any]:
    """Paired top-1 drop (reference minus candidate) in points, with a bootstrap interval over images."""
    ref_correct, correct = np.asarray(ref_correct, bool), np.asarray(correct, bool)
    n = len(correct)
    drop = 100.0 * (ref_correct.mean() - correct.mean())
    rng = np.random.default_rng(seed)
    diff = ref_correct.astype(np.int8) - correct.astype(np.int8)  # +1: only the reference got it right
    boots = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunked: memory stays small for big eval sets
        idx = rng.integers(0, n, size=(min(256, resamples - start), n))
        boots[start:start + len(idx)] = 100.0 * diff[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    b, c = int(np.sum(diff == 1)), int(np.sum(diff == -1))
    within = bool(lo <= 0.0 <= hi)
    return {"top1_drop_pts": float(drop), "ci95_pts": [float(lo), float(hi)], "mcnemar_p": mcnemar_exact_p(b, c),
            "discordant": {"reference_only_correct": b, "candidate_only_correct": c},
            "within_noise": within}


def accuracy_pass(items: list[Measured], images: Any, labels: np.ndarray, classes: list[str], batch: int,
                  advance: Callable[[float], Any] = lambda fraction: None) -> None:
    """Logits and accuracy metrics of every live artifact on every image (an NCHW array or
    :class:`~edgetl.data.EvalImages`).

    One streamed pass: each batch is decoded once and run by every artifact, and only the logits
    (N x classes) are kept. An artifact that fails leaves the pass (:meth:`Measured.attempt`);
    ``advance(fraction)`` reports the fraction of the images done.
    """
    from ..data import image_batches

    live = [m for m in items if m.live]
    outputs: dict[Measured, list[np.ndarray]] = {m: [] for m in live}
    for n, chunk in enumerate(image_batches(images, batch)):
        real = len(chunk)
        if real < batch and n > 0:  # pad: static-batch models take only full batches
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        for m in live:
            m.attempt(lambda m=m, chunk=chunk, real=real: outputs[m].append(m.runner.infer(chunk)[:real]))
        advance(real / len(images))
    for m in live:
        if m.live:
            m.logits = np.concatenate(outputs[m])
            m.row["accuracy"] = classification_metrics(m.logits, labels, classes)


def reference_of(items: list[Measured]) -> Measured | None:
    """The float reference among the artifacts with logits: PyTorch eager FP32, else the first that ran FP32."""
    scored = [m for m in items if m.logits is not None]
    return next((m for m in scored if m.target.runtime == "torch" and m.row["precision_executed"] == "fp32"),
                next((m for m in scored if m.row["precision_executed"] == "fp32"), None))


def compare_to_reference(items: list[Measured], reference: Measured, labels: np.ndarray,
                         config: BenchConfig) -> None:
    """``vs_reference`` of every artifact with logits: top-1 drop with its interval, agreement, logit
    differences, and the speed-up per batch (reference p50 / this p50)."""
    ref_correct = reference.logits.argmax(1) == labels
    ref_p50 = {s["batch"]: s["p50_stable_ms"] for s in reference.row["latency"]}
    for m in items:
        if m.logits is None:
            continue
        vs = accuracy_drop(ref_correct, m.logits.argmax(1) == labels, config.bootstrap, config.seed)
        diff = np.abs(m.logits - reference.logits)
        vs.update(reference=reference.row["label"], is_reference=m is reference,
                  top1_agreement=float(np.mean(m.logits.argmax(1) == reference.logits.argmax(1))),
                  max_abs_logit_diff=float(diff.max()), mean_abs_logit_diff=float(diff.mean()),
                  speedup_vs_reference={str(s["batch"]): ref_p50[s["batch"]] / s["p50_stable_ms"]
                                        for s in m.row["latency"] if s["batch"] in ref_p50})
        m.row["vs_reference"] = vs
