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


class DistillationLoss:
    """Logit distillation (Hinton et al.): ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``.

    The teacher (the unpruned float model, eval mode) sees the same augmented batch as the student, so the
    trainer passes the inputs (``needs_inputs``)."""

    needs_inputs = True

    def __init__(self, teacher: Any, temperature: float = 4.0, alpha: float = 0.7,
                 label_smoothing: float = 0.0) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.hard = ClassificationLoss(label_smoothing)

    def __call__(self, output: Any, targets: Any, inputs: Any = None) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        logits, hard = self.hard(output, targets)
        if inputs is None or self.alpha == 0:
            return logits, hard
        with torch.no_grad():
            teacher = self.teacher(inputs)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                        reduction="batchmean") * t * t
        return logits, self.alpha * soft + (1 - self.alpha) * hard

    def on_logits(self, logits: Any, targets: Any) -> Any:
        return self.hard.on_logits(logits, targets)
