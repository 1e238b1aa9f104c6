"""Distillation loss: the feature term (the classifier's input against the teacher's), mixup applied to the
inputs both networks see, and hooks that go away with ``close``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetl.train.losses import DistillationLoss


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2))


def test_feature_term_is_the_relative_error_of_the_classifier_input():
    teacher, student = _net(0), _net(1)
    images, targets = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 1, 0, 1])
    plain = DistillationLoss(teacher, 2.0, 0.5)
    with_features = DistillationLoss(teacher, 2.0, 0.5, student=student, feature_weight=0.3, feature_points=[("3", "input", None)])
    logits = student(images)
    _, base = plain(logits, targets, inputs=images)
    logits = student(images)
    _, total = with_features(logits, targets, inputs=images)
    s, t = student[:3](images), teacher[:3](images)
    expected = ((s - t).pow(2).sum(1) / t.pow(2).sum(1)).mean()
    assert total.item() == pytest.approx(base.item() + 0.3 * expected.item(), rel=1e-5)
    # a student equal to its teacher has no feature error
    twin = copy.deepcopy(teacher)
    same = DistillationLoss(teacher, 2.0, 0.0, student=twin, feature_weight=5.0, feature_points=[("3", "input", None)])
    _, value = same(twin(images), targets, inputs=images)
    assert value.item() == pytest.approx(F.cross_entropy(teacher(images), targets).item(), rel=1e-5)


def test_gradients_reach_the_student_through_the_feature_term():
    teacher, student = _net(0), _net(1)
    loss = DistillationLoss(teacher, 1.0, 1.0, student=student, feature_weight=1.0, feature_points=[("3", "input", None)])
    images = torch.randn(4, 3, 2, 2)
    _, value = loss(student(images), torch.zeros(4, dtype=torch.long), inputs=images)
    value.backward()
    assert student[1].weight.grad.abs().sum() > 0 and teacher[1].weight.grad is None


def test_mixup_mixes_the_batch_and_its_labels():
    teacher, student = _net(0), _net(1)
    loss = DistillationLoss(teacher, 1.0, 0.0, mixup=0.4)
    images, targets = torch.randn(6, 3, 2, 2), torch.tensor([0, 0, 0, 1, 1, 1])
    torch.manual_seed(3)
    mixed = loss.prepare(images, targets)
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    order = torch.randperm(6)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[order])
    logits = student(mixed)
    _, value = loss(logits, targets, inputs=mixed)
    expected = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets[order])
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # off: the batch is untouched and the next loss is the plain one
    off = DistillationLoss(teacher, 1.0, 0.0)
    assert off.prepare(images, targets) is images


def test_close_removes_the_hooks():
    teacher, student = _net(0), _net(1)
    loss = DistillationLoss(teacher, 1.0, 0.5, student=student, feature_weight=1.0, feature_points=[("3", "input", None)])
    assert len(student[3]._forward_hooks) == 1 and len(teacher[3]._forward_hooks) == 1
    loss.close()
    assert not student[3]._forward_hooks and not teacher[3]._forward_hooks


def test_a_narrower_student_is_compared_at_the_features_it_kept():
    teacher = _net(0)
    torch.manual_seed(2)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    kept = [0, 2, 3, 5]
    with torch.no_grad():  # the student is the teacher with hidden units 1 and 4 removed
        student[1].weight.copy_(teacher[1].weight[kept]), student[1].bias.copy_(teacher[1].bias[kept])
    loss = DistillationLoss(teacher, 1.0, 0.0, student=student, feature_weight=1.0, feature_points=[("3", "input", kept)])
    images, targets = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1])
    logits = student(images)
    _, value = loss(logits, targets, inputs=images)
    assert value.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)  # no feature error
    with pytest.raises(RuntimeError, match="size|shape"):  # without the index the widths do not match
        DistillationLoss(teacher, 1.0, 0.0, student=student, feature_weight=1.0, feature_points=[("3", "input", None)])(
            student(images), targets, inputs=images)


def test_several_points_average_their_relative_errors():
    teacher, student = _net(0), _net(1)
    points = [("1", "output", None), ("3", "input", None)]
    loss = DistillationLoss(teacher, 1.0, 1.0, student=student, feature_weight=2.0, feature_points=points)
    plain = DistillationLoss(teacher, 1.0, 1.0)
    images, targets = torch.randn(3, 3, 2, 2), torch.tensor([0, 1, 1])
    _, base = plain(student(images), targets, inputs=images)
    _, total = loss(student(images), targets, inputs=images)

    def rel(s, t):
        return ((s - t).pow(2).sum(1) / t.pow(2).sum(1)).mean().item()

    expected = (rel(student[:2](images), teacher[:2](images)) + rel(student[:3](images), teacher[:3](images))) / 2
    assert total.item() == pytest.approx(base.item() + 2.0 * expected, rel=1e-5)


def test_feature_points_without_a_student_are_refused():
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="student"):
        DistillationLoss(_net(0), feature_weight=1.0, feature_points=[("3", "input", None)])


def test_weight_average_of_a_distilled_student_feeds_no_feature_hooks():
    """The EMA copy is made after the loss hooked the student: evaluating the copy must leave the loss's
    captured features alone (they are the training batch's), while the student still feeds them."""
    from edgetl.train.trainer import weight_average

    teacher, student = _net(0), _net(1)
    loss = DistillationLoss(teacher, 2.0, 0.5, student=student, feature_weight=0.3, feature_points=[("3", "input", None)])
    ema = weight_average(student, 0.9)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in ema.module.modules()) == 0
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in student.modules()) > 0
    images, targets = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 1, 0])
    student.train()
    _, before = loss(student(images), targets, inputs=images)
    logits = student(images)
    ema.module(torch.randn(4, 3, 2, 2) * 100)  # would overwrite the student's captured features if hooked
    _, after = loss(logits, targets, inputs=images)
    assert torch.allclose(before, after)
    loss.close()
    assert weight_average(student, None) is None
