"""What ``edgetl prune`` repairs a freshly pruned model with before any training: calibration images (several
views of each training image), the record of kept channels across pruning steps, least squares or, failing
that, BatchNorm statistics re-estimated."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CALIBRATION_LIMIT = 1000
"""At most this many calibration images in all (views included): memory and time stay bounded on large sets."""


def calibration_batches(samples: list, spec: Any, views: int, batch_size: int, seed: int = 0,
                        limit: int = CALIBRATION_LIMIT) -> list[Any]:
    """The training images as input batches, ``views`` times: first as evaluated (resize, centre crop), then
    as trained on (random resized crop, flip, colour jitter), each view drawn once and kept, so the student
    and the teacher see the same pixels at every pass. More than ``limit`` images in all: fewer views, then
    a seeded subset of the images."""

    import torch

    from ...data import balanced_sample, make_loader

    if views < 1:
        from ...errors import ConfigError

        raise ConfigError(f"calibration views must be at least 1, not {views}")
    views = max(1, min(views, limit // max(len(samples), 1)))
    if len(samples) > limit:  # every class keeps its share of the Gram matrices
        samples = balanced_sample(list(samples), limit, seed)
    batches: list[Any] = []
    with torch.random.fork_rng():  # the random crops do not move the training's random stream
        torch.manual_seed(seed)
        for view in range(views):
            transform = spec.eval_transform() if view == 0 else spec.train_transform(True)
            batches += [images for images, _ in make_loader(samples, transform, batch_size, workers=0, seed=seed)]
    return batches


def compose_kept(previous: dict[str, list[int]], step: dict[str, list[int]]) -> dict[str, list[int]]:
    """Kept output channels after another pruning step: ``step`` indexes the channels ``previous`` kept."""
    composed = dict(previous)
    for name, kept in step.items():
        before = previous.get(name)
        composed[name] = list(kept) if before is None else [before[i] for i in kept]
    return composed


def recalibrate_bn(model: Any, batches: Iterable[Any]) -> None:
    """Re-estimate BatchNorm statistics on ``batches`` (a cumulative average over one pass, no gradients):
    removing input channels shifts every later layer's activations, and stale running statistics cost more
    accuracy than the pruning itself."""
    import torch
    import torch.nn as nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for images in batches:
                model(images)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()


def reconstruction_importance(model: Any, batches: list[Any]) -> Any:
    """A Torch-Pruning importance ranking each channel by how well its consumers can be re-solved without it
    (:mod:`~edgetl.compress.prune.selection`), magnitude for groups no 1x1 / Linear layer consumes."""
    from .selection import ReconstructionImportance, consumer_layers, input_grams
    from ._tp import import_torch_pruning
    from .structured import make_importance

    grams = input_grams(model, consumer_layers(model), lambda: iter(batches))
    return ReconstructionImportance(grams, make_importance(import_torch_pruning(), "magnitude"))
