"""Classification metrics: top-k, per-class accuracy and the confusion matrix, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

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



def _reference(logits: np.ndarray, labels: np.ndarray, num_classes: int, k: int):
    """Top-1, top-k, confusion matrix and per-class recall by plain loops (no ties in ``logits``)."""
    rows = [list(map(float, row)) for row in logits]
    predictions = [row.index(max(row)) for row in rows]
    in_top_k = [label in sorted(range(num_classes), key=lambda c: -row[c])[:k] for row, label in zip(rows, labels)]
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for truth, predicted in zip(labels, predictions):
        matrix[truth][predicted] += 1
    recall = [matrix[c][c] / sum(matrix[c]) if sum(matrix[c]) else None for c in range(num_classes)]
    top1 = sum(p == t for p, t in zip(predictions, labels)) / len(labels)
    return top1, sum(in_top_k) / len(labels), matrix, recall


def test_metrics_match_an_independent_computation():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    labels = rng.choice([0, 1, 2, 3, 4, 6], size=300)  # class c5 has no images
    logits = rng.normal(size=(300, 7)) + 1.5 * np.eye(7)[labels]  # better than chance, far from perfect
    top1, top5, matrix, recall = _reference(logits, labels, 7, 5)
    assert 0.3 < top1 < 0.9  # precondition: mistakes to count, in every direction
    metrics = classification_metrics(logits, labels, classes)
    assert metrics["samples"] == 300
    assert metrics["top1"] == pytest.approx(top1) and metrics["top5"] == pytest.approx(top5)
    assert metrics["confusion_matrix"] == matrix  # rows: true class, columns: predicted
    assert metrics["per_class"] == pytest.approx(dict(zip(classes, recall)))
    assert metrics["per_class"]["c5"] is None
    assert topk_accuracy(logits, labels, 3) == pytest.approx(_reference(logits, labels, 7, 3)[1])


def test_metrics_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)) + np.eye(10)[labels]
    metrics = classification_metrics(logits, labels, [str(i) for i in range(10)])
    assert metrics["top1"] == pytest.approx(sklearn_metrics.accuracy_score(labels, logits.argmax(1)))
    assert metrics["top5"] == pytest.approx(sklearn_metrics.top_k_accuracy_score(labels, logits, k=5,
                                                                                 labels=range(10)))
    expected = sklearn_metrics.confusion_matrix(labels, logits.argmax(1), labels=range(10))
    assert metrics["confusion_matrix"] == expected.tolist()
    recall = sklearn_metrics.recall_score(labels, logits.argmax(1), average=None, labels=range(10))
    assert list(metrics["per_class"].values()) == pytest.approx(recall.tolist())


def test_tied_logits_count_like_argmax():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, 500)
    logits = np.round(rng.normal(size=(500, 100)))  # a few levels only: many ties, as in quantized logits
    metrics = classification_metrics(logits, labels, [str(i) for i in range(100)])
    assert metrics["top1"] == float(np.mean(logits.argmax(1) == labels))
    assert metrics["top1"] == np.trace(metrics["confusion_matrix"]) / len(labels)
