"""Loss objects a trainer calls as ``loss(output, targets) -> (logits, loss)``.

A loss object sees the model's raw output, so models with auxiliary heads (InceptionV3 in training)
and, next, distillation from a teacher plug in without touching the loop.
"""

from __future__ import annotations

from typing import Any


class ClassificationLoss:
    """Cross-entropy with label smoothing; auxiliary logits (a tuple output) weigh ``aux_weight``."""

    def __init__(self, label_smoothing: float = 0.0, aux_weight: float = 0.4) -> None:
        import torch

        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.aux_weight = aux_weight

    def __call__(self, output: Any, targets: Any) -> tuple[Any, Any]:
        if isinstance(output, tuple):  # InceptionV3 in training: (logits, aux_logits)
            logits, aux = output[0], output[1]
            return logits, self.criterion(logits, targets) + self.aux_weight * self.criterion(aux, targets)
        return output, self.criterion(output, targets)

    def on_logits(self, logits: Any, targets: Any) -> Any:
        """The loss of plain logits (cached-feature training, where no auxiliary head runs)."""
        return self.criterion(logits, targets)
