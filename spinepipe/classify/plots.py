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


def plot_score_placement(cv: dict, path: Path) -> None:
    """Each split's score between its prior (the ceiling) and, where the true severities are
    known, its Bayes floor: one row for the CV (train split), one for the test split (when
    scored), the share of the gap closed beside each score."""
    plt = _pyplot()
    rows = [("CV (train, out of fold)", "", cv["cv_score"], cv.get("cv_score_annotated_points"))]
    if cv.get("test_score") is not None:
        rows.append(("test", "test_", cv["test_score"], None))
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.8 * len(rows)))
    for y, (_, prefix, score, annotated) in enumerate(reversed(rows)):
        prior, floor = cv[f"{prefix}prior_score"], cv.get(f"{prefix}floor_score")
        low = 0.0 if floor is None else floor
        ax.plot([low, prior], [y, y], color="0.8", linewidth=10, solid_capstyle="butt", zorder=1)
        ax.scatter([prior], [y], marker="|", s=400, color="black", zorder=3)
        ax.annotate(f"prior {prior:.3f}", (prior, y), xytext=(0, 12), textcoords="offset points",
                    ha="center", fontsize=8)
        if floor is not None:
            ax.scatter([floor], [y], marker="|", s=400, color="tab:green", zorder=3)
            ax.annotate(f"floor {floor:.3f}", (floor, y), xytext=(0, 12), textcoords="offset points",
                        ha="center", fontsize=8, color="tab:green")
        if annotated is not None:
            ax.scatter([annotated], [y], marker="o", facecolors="none", edgecolors="tab:blue",
                       zorder=4, label="CV on annotated points")
        closed = cv.get(f"{prefix}gap_closed")
        text = f"{score:.3f}" + ("" if closed is None else f" ({100 * closed:.0f}% of the gap)")
        ax.scatter([score], [y], marker="o", color="tab:red", zorder=5)
        ax.annotate(text, (score, y), xytext=(0, -16), textcoords="offset points", ha="center",
                    fontsize=8, color="tab:red")
    ax.set_yticks(range(len(rows)), [name for name, *_ in reversed(rows)])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(left=0)
    ax.set_xlabel("competition metric (lower is better)")
    if any(annotated is not None for *_, annotated in rows):
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
