"""Top-1 and a quick latency figure of one model on a run's images: the measurements that target builds,
pruning and the benchmark scripts share (``edgetl bench`` has its own, fuller latency statistics).

A model is a torch module (run in eval mode, without gradients) or a runner (anything with
``infer(batch) -> logits``: a target artifact, the float checkpoint); images are
:class:`~edgetl.data.EvalImages` (decoded as they go) or an NCHW array with its labels.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def logits(model: Any, images: Any, *, batch_size: int = 32, decode_batch: int = 32) -> np.ndarray:
    """``model``'s logits for every image, ``batch_size`` images per call (1: the shape an edge app runs),
    the images decoded about ``decode_batch`` at a time (a multiple of ``batch_size``)."""
    from .data import image_batches

    infer = model.infer if hasattr(model, "infer") else _torch_infer(model)
    chunk = batch_size * max(1, -(-decode_batch // batch_size))
    out = [infer(batch[i:i + batch_size]) for batch in image_batches(images, chunk)
           for i in range(0, len(batch), batch_size)]
    return np.concatenate(out)


def top1(model: Any, images: Any, labels: np.ndarray | None = None, *, batch_size: int = 32,
         decode_batch: int = 32) -> float:
    """Top-1 of ``model`` on ``images`` (``labels``: default the labels of :class:`~edgetl.data.EvalImages`)."""
    labels = images.labels if labels is None else labels
    return float(np.mean(logits(model, images, batch_size=batch_size, decode_batch=decode_batch).argmax(1) == labels))


def _torch_infer(module: Any) -> Any:
    import torch

    module.eval()

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()

    return infer


def latency_p50_ms(runner: Any, batch: np.ndarray, runs: int, warmup: int = 10) -> float | None:
    """Median wall time of ``runs`` synchronous inferences of ``batch``, in ms (a quick figure, not bench's);
    None when ``runs`` is 0."""
    if not runs:
        return None
    for _ in range(warmup):
        runner.infer(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.infer(batch)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)
