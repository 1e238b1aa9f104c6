"""Classification metrics from logits: top-k, per-class accuracy, confusion matrix and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # ties ranked as argmax ranks them (first wins)
    return float(np.mean(np.any(top == labels[:, None], axis=1))) if len(labels) else 0.0


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """top1/top5 (fractions; top5 None for 5 classes or fewer), per-class accuracy and the confusion matrix (rows: truth)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    predictions = logits.argmax(axis=1)
    matrix = confusion_matrix(predictions, labels, len(classes))
    totals = matrix.sum(axis=1)
    per_class = {name: (float(matrix[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(classes)}
    return {
        "samples": int(len(labels)),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5) if len(classes) > 5 else None,  # trivially 100% otherwise
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def plot_confusion_matrix(matrix: np.ndarray | list, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Write a PNG of the confusion matrix (counts, rows = true class) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_path

    matrix = np.asarray(matrix)
    n = len(classes)
    size = min(4 + 0.4 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    if n <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
