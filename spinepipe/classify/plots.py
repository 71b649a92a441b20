"""Figures of a training run and of the evaluation: loss curves, confusion matrices, calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinepipe.constants import SEVERITIES


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss (weighted)")
    if history and "val_metric" in history[0]:
        ax.plot(epochs, [h["val_metric"] for h in history], label="validation metric")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """3x3 counts, rows true severity, columns predicted (unlabelled rows skipped)."""
    matrix = np.zeros((3, 3), dtype=np.int64)
    for t, p in zip(targets, predicted):
        if t >= 0:
            matrix[t, p] += 1
    return matrix


def plot_confusions(matrices: dict[str, np.ndarray], path: Path) -> None:
    plt = _pyplot()
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center")
        ax.set_xticks(range(3), [s.split("/")[0] for s in SEVERITIES], fontsize=7)
        ax.set_yticks(range(3), [s.split("/")[0] for s in SEVERITIES], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name.replace("_", " "), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_calibration(probs: np.ndarray, targets: np.ndarray, path: Path, bins: int = 10) -> None:
    """Reliability of each severity's predicted probability (labelled rows)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    edges = np.linspace(0, 1, bins + 1)
    for k, name in enumerate(SEVERITIES):
        p, hit = probs[:, k], (targets == k).astype(float)
        which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            sel = which == b
            if sel.sum() >= 3:
                xs.append(p[sel].mean())
                ys.append(hit[sel].mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
