"""Learning-rate schedules, from torch's own schedulers."""

from __future__ import annotations

from typing import Any


def warmup_cosine(optimizer: Any, total_steps: int, warmup_steps: int = 0) -> Any:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine decay to zero at ``total_steps``."""
    import torch

    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if not warmup_steps:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0,
                                               total_iters=warmup_steps - 1)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
