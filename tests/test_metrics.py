from __future__ import annotations

import numpy as np

from edgetl.metrics import classification_metrics, confusion_matrix, topk_accuracy


def test_topk_and_confusion():
    logits = np.array([[3.0, 2, 1, 0, 0, 0], [0, 3, 2, 1, 0, 0], [0, 0, 0, 0, 1, 3]])
    labels = np.array([1, 1, 4])
    assert topk_accuracy(logits, labels, 1) == 1 / 3
    assert topk_accuracy(logits, labels, 2) == 1.0
    assert confusion_matrix(logits.argmax(1), labels, 6)[1].tolist() == [1, 1, 0, 0, 0, 0]


def test_top5_only_with_more_than_five_classes():
    logits = np.eye(3)[[0, 1, 2, 0]]
    metrics = classification_metrics(logits, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert metrics["top1"] == 0.75 and metrics["top5"] is None
    assert metrics["per_class"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    six = classification_metrics(np.tile(np.arange(6.0), (2, 1)), np.array([0, 5]), list("abcdef"))
    assert six["top5"] == 0.5

