"""Loss objects a trainer calls as ``loss(output, targets) -> (logits, loss)``.

A loss object sees the model's raw output, so models with auxiliary heads (InceptionV3 in training)
and, next, distillation from a teacher plug in without touching the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError


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
    """Logit distillation (Hinton et al.): ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``,
    plus, with ``feature_weight``, feature distillation: the relative squared error between the student's and
    the teacher's activations at ``feature_points`` (the classifier's input, block outputs), averaged over
    the points. A 2-class task's logits carry one number per image; its features carry hundreds. With
    ``mixup``, training batches are mixed (Beta(mixup, mixup) weights) before both networks see them: the
    teacher labels every mixed image, so a small training set yields new inputs at every epoch ("function
    matching", Beyer et al. 2022).

    The teacher (the unpruned float model, eval mode) sees the same augmented batch as the student, so the
    trainer passes the inputs (``needs_inputs``) and calls :meth:`prepare` on each training batch."""

    needs_inputs = True

    def __init__(self, teacher: Any, temperature: float = 4.0, alpha: float = 0.7, label_smoothing: float = 0.0,
                 *, student: Any = None, feature_weight: float = 0.0, mixup: float = 0.0,
                 feature_points: Sequence[tuple[str, str, list[int] | None]] = ()) -> None:
        """``feature_points``: (module name, ``input`` or ``output``, the teacher's channels the student kept
        there, None: all) for each activation matched."""
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.feature_weight, self.mixup = feature_weight, mixup
        self.hard = ClassificationLoss(label_smoothing)
        self._mixed: tuple[float, Any] | None = None
        if feature_weight > 0 and feature_points and student is None:
            raise ConfigError("feature distillation needs the student model (student=...) to read its activations")
        self._taps = [(_Tap(student.get_submodule(name), side), _Tap(teacher.get_submodule(name), side), index)
                      for name, side, index in feature_points] if feature_weight > 0 else []

    def prepare(self, images: Any, targets: Any) -> Any:
        """A training batch, mixed with a shuffled copy of itself when ``mixup`` is on."""
        import torch

        self._mixed = None
        if self.mixup <= 0 or len(images) < 2:
            return images
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        order = torch.randperm(len(images))
        self._mixed = (lam, targets[order])
        return lam * images + (1 - lam) * images[order]

    def __call__(self, output: Any, targets: Any, inputs: Any = None) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        logits, hard = self.hard(output, targets)
        if self._mixed is not None:  # the labels of a mixed batch mix too
            lam, others = self._mixed
            hard = lam * hard + (1 - lam) * self.hard.on_logits(logits, others)
            self._mixed = None
        if inputs is None or (self.alpha == 0 and not self._taps):
            return logits, hard
        with torch.no_grad():
            teacher = self.teacher(inputs)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                        reduction="batchmean") * t * t
        loss = self.alpha * soft + (1 - self.alpha) * hard
        if self._taps:
            loss = loss + self.feature_weight * sum(_relative_error(*pair) for pair in self._taps) / len(self._taps)
        return logits, loss

    def on_logits(self, logits: Any, targets: Any) -> Any:
        return self.hard.on_logits(logits, targets)

    def close(self) -> None:
        """Remove the feature hooks (a loss built per pruning step must not leave its hooks behind)."""
        for student_tap, teacher_tap, _ in self._taps:
            student_tap.handle.remove()
            teacher_tap.handle.remove()


def _relative_error(student_tap: _Tap, teacher_tap: _Tap, index: list[int] | None) -> Any:
    """Per image ``|s - t|^2 / |t|^2`` over all channels and positions, averaged over the batch; ``index``
    picks the teacher channels the (pruned) student kept."""
    student, teacher = student_tap.take(), teacher_tap.take()
    if index is not None:
        teacher = teacher[:, index]
    student, teacher = student.flatten(1), teacher.flatten(1)
    return ((student - teacher).pow(2).sum(1) / teacher.pow(2).sum(1).clamp_min(1e-8)).mean()


class _Tap:
    """Keeps the input (``side="input"``) or output of the last forward pass through ``module``."""

    def __init__(self, module: Any, side: str) -> None:
        self.value: Any = None
        self.side = side
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module: Any, args: tuple, output: Any) -> None:
        self.value = args[0] if self.side == "input" else output

    def take(self) -> Any:
        value, self.value = self.value, None
        return value
