"""``calibration: auto`` for the Q/DQ quantizer: the activation-range method chosen per model.

Each candidate (min-max, percentile at two points, entropy) calibrates on three quarters of the
calibration images; the one whose INT8 outputs stay closest to the float model's on the held-out quarter
wins (mean KL divergence of the softmax, then top-1 agreement). Only calibration images are used, never
the val split the budget is measured on, so the choice cannot fit the figure it is judged by. The Q/DQ
graphs are run with ONNX Runtime's optimizations off: the exact Q/DQ arithmetic, the same on every CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

CANDIDATES = (("minmax", None), ("percentile", 99.99), ("percentile", 99.999), ("entropy", None))
"""(method, percentile): the ranges TensorRT's and ModelOpt's calibrators offer for CNN activations."""
HELD_OUT_EVERY = 4
"""Every 4th calibration image is held out to judge the candidates."""
MIN_IMAGES = 8
"""Fewer calibration images than this: no search (min-max on all of them)."""


@dataclass
class SearchReport:
    """What the search tried and chose (recorded in the build's metrics as ``calibration_search``)."""

    chosen: str
    fit_images: int
    held_out_images: int
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per method: mean KL (float || INT8) and top-1 agreement with the float model on the held-out images."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def label(method: str, percentile: float | None) -> str:
    return f"percentile {percentile:g}" if method == "percentile" else method


def search(model: Any, calib: list[tuple[Path, int]], spec: Any, settings: Any, quantize_qdq: Callable[..., Any],
           session: Callable[..., Any]) -> tuple[Any, SearchReport]:
    """The Q/DQ model of the best candidate (calibrated on the fit part) and the report. ``quantize_qdq`` and
    ``session`` are the backend's (:mod:`.ort_qdq` passes its own: this module does not import it)."""
    if len(calib) < MIN_IMAGES:
        chosen = dataclasses.replace(settings, calibration="minmax")
        log.info("calibration: %d images, too few to hold some out: min-max", len(calib))
        return quantize_qdq(model, calib, spec, chosen), SearchReport("minmax", len(calib), 0)
    held = calib[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    fit = [s for k, s in enumerate(calib) if k % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    images = _decode(held, spec)
    reference = _softmax(_logits(session(model, optimize=False), images))
    report = SearchReport("", len(fit), len(held))
    best: tuple[tuple[float, float], Any, str] | None = None
    for method, percentile in CANDIDATES:
        name = label(method, percentile)
        candidate = dataclasses.replace(settings, calibration=method,
                                        percentile=percentile if percentile is not None else settings.percentile)
        quantized = quantize_qdq(model, fit, spec, candidate)
        probs = _softmax(_logits(session(quantized, optimize=False), images))
        kl = float(np.mean(np.sum(reference * (np.log(reference + 1e-12) - np.log(probs + 1e-12)), axis=1)))
        agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        report.candidates[name] = {"kl": round(kl, 6), "top1_agreement": round(agreement, 4)}
        log.info("calibration %-16s KL %.5f, top-1 agreement %.1f%% on %d held-out images", name, kl,
                 100 * agreement, len(held))
        if best is None or (round(kl, 9), -agreement) < best[0]:
            best = ((round(kl, 9), -agreement), quantized, name)
    report.chosen = best[2]
    log.info("calibration: %s chosen", report.chosen)
    return best[1], report


def _decode(samples: list[tuple[Path, int]], spec: Any) -> np.ndarray:
    from .calibration import CalibrationImages

    return np.concatenate(list(CalibrationImages(samples, spec)), axis=0)


def _logits(sess: Any, images: np.ndarray, batch: int = 16) -> np.ndarray:
    name, first = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
    batch = first if isinstance(first, int) and first > 0 else batch  # a static batch is run as it is
    return np.concatenate([sess.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
