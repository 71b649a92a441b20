"""Drawing a planned sheet's parts with matplotlib (Agg): an image panel with its points and
edge labels (``draw_panel``), a level's crop montage (``draw_montage``) and the probability
grid (``draw_grid``). The study sheet and the galleries lay these out on their figures.

Each part is a handful of ``imshow``/``scatter`` calls on whole arrays. matplotlib is imported
on first use (``pyplot``), so planning and loading never import it.
"""

from __future__ import annotations

import numpy as np

from spinepipe.constants import CONDITIONS, LEVEL_NAMES, LEVELS, SEVERITIES
from spinepipe.qa.montage import GAP, CropMontage
from spinepipe.qa.panels import ImagePanel
from spinepipe.qa.plan import ProbabilityGrid

CONDITION_SHORT: dict[str, str] = {
    "spinal_canal_stenosis": "canal",
    "left_neural_foraminal_narrowing": "L foramen",
    "right_neural_foraminal_narrowing": "R foramen",
    "left_subarticular_stenosis": "L recess",
    "right_subarticular_stenosis": "R recess",
}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


_PRED_COLOUR, _ANN_COLOUR, _LINE_COLOUR = "#ff3b30", "#34c759", "#ffd60a"
LABEL_BOX = {"boxstyle": "square,pad=0.15", "facecolor": "black", "alpha": 0.6, "linewidth": 0}


def draw_panel(ax, panel: ImagePanel) -> None:
    """One image panel: the slice, its edge labels, points, pair labels and note (or the
    note alone, on grey, when the panel has no image)."""
    ax.set_xticks([])
    ax.set_yticks([])
    colour = "#c00000" if panel.warning else "black"
    title = panel.title if panel.side_text is None else f"{panel.title}\n{panel.side_text}"
    ax.set_title(title, fontsize=7, color=colour, pad=2)
    if panel.image is None:
        ax.set_facecolor("#e6e6e6")
        ax.text(0.5, 0.5, panel.note or "nothing to show", ha="center", va="center",
                fontsize=8, transform=ax.transAxes, color="#444444")
        return
    h, w = panel.image.shape
    ax.imshow(panel.image, cmap="gray", vmin=0.0, vmax=1.0, aspect=panel.aspect,
              interpolation="nearest")
    if panel.edge_labels is not None:
        for xpos, label, ha in ((0.01, panel.edge_labels[0], "left"), (0.99, panel.edge_labels[1], "right")):
            ax.text(xpos, 0.5, label, transform=ax.transAxes, ha=ha, va="center", fontsize=9,
                    fontweight="bold", color="white", bbox=LABEL_BOX)
    if panel.vertical_labels is not None:
        top, bottom = panel.vertical_labels
        for ypos, label, va in ((0.99, top, "top"), (0.01, bottom, "bottom")):
            ax.text(0.5, ypos, label, transform=ax.transAxes, ha="center", va=va, fontsize=7,
                    color="white", bbox=LABEL_BOX)
    pred = [p.predicted for p in panel.pairs if p.predicted is not None]
    ann = [p.annotated for p in panel.pairs if p.annotated is not None]
    segments = [[(p.predicted.x, p.predicted.y), (p.annotated.x, p.annotated.y)]
                for p in panel.pairs if p.predicted is not None and p.annotated is not None]
    if segments:
        from matplotlib.collections import LineCollection
        ax.add_collection(LineCollection(segments, colors=_LINE_COLOUR, linewidths=0.8))
    for points, colour_, marker in ((pred, _PRED_COLOUR, "o"), (ann, _ANN_COLOUR, "x")):
        if points:
            on = [p for p in points if p.on_slice]
            off = [p for p in points if not p.on_slice]
            if on:
                ax.scatter([p.x for p in on], [p.y for p in on], s=14, c=colour_, marker=marker,
                           linewidths=1.0)
            if off:  # on another slice: hollow circles, thinner crosses
                style = ({"facecolors": "none", "edgecolors": colour_} if marker == "o"
                         else {"c": colour_})
                ax.scatter([p.x for p in off], [p.y for p in off], s=18, marker=marker,
                           linewidths=0.6, **style)
    for pair in panel.pairs:
        anchor = pair.predicted or pair.annotated
        text = pair.label
        if anchor is not None and not anchor.on_slice:
            text += f" (s{anchor.slice_index})"
        if pair.distance_mm is not None:
            text += f"  {pair.distance_mm:.1f} mm"
        ax.text(anchor.x + 0.04 * w, anchor.y, text, fontsize=6, color="white", va="center",
                clip_on=True, bbox=LABEL_BOX)
    for x, y, _label in panel.markers:
        ax.scatter([x], [y], s=30, marker="+", c="#0a84ff", linewidths=1.0)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if panel.note:
        ax.text(0.5, 0.02, panel.note, transform=ax.transAxes, ha="center", va="bottom",
                fontsize=6, color="#ffcc00", bbox=LABEL_BOX)


def draw_montage(ax, montage: CropMontage, labels: bool) -> None:
    """One level's crops; ``labels``: name the rows (views) and columns (slice offsets)."""
    ax.imshow(montage.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    h, w = montage.tile
    rows, cols = montage.masked.shape
    ax.set_title(f"crops · {LEVEL_NAMES[montage.level]}", fontsize=7, pad=2)
    ax.tick_params(length=0, pad=1)
    if labels:
        ax.set_yticks([r * (h + GAP) + h / 2 for r in range(rows)], montage.views, fontsize=6)
        ax.set_xticks([c * (w + GAP) + w / 2 for c in range(cols)],
                      [f"{o:+d}" if o else "0" for o in montage.offsets], fontsize=6)
        if montage.model_slices is not None:  # slices cached only for the slice jitter: grey
            for label, offset in zip(ax.get_xticklabels(), montage.offsets):
                if abs(offset) > montage.model_slices:
                    label.set_color("#999999")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle
    boxes = []
    m = montage.margin
    for r in range(rows):
        for c, offset in enumerate(montage.offsets):
            if montage.masked[r, c]:
                if not montage.masked[r].all():
                    ax.text(c * (w + GAP) + w / 2, r * (h + GAP) + h / 2, "masked", fontsize=6,
                            ha="center", va="center", color="white")
                continue
            if m > 0 and (montage.model_slices is None or abs(offset) <= montage.model_slices):
                boxes.append(Rectangle((c * (w + GAP) + m - 0.5, r * (h + GAP) + m - 0.5),
                                       w - 2 * m, h - 2 * m))
        if montage.masked[r].all():
            ax.text(cols * (w + GAP) / 2, r * (h + GAP) + h / 2,
                    f"masked ({montage.statuses[r]})", fontsize=6, ha="center", va="center",
                    color="white", bbox=LABEL_BOX)
    if boxes:
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor="#0a84ff",
                                          linewidth=0.4, linestyle=":"))


def draw_grid(ax, grid: ProbabilityGrid) -> None:
    """The probabilities (percent, one row per condition, three columns per level) with the
    true severity boxed."""
    n_cond, n_lev, n_sev = grid.probs.shape
    flat = grid.probs.reshape(n_cond, n_lev * n_sev)
    ax.imshow(np.ma.masked_invalid(flat), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
              interpolation="nearest")
    ax.set_facecolor("#dddddd")
    for (i, j), value in np.ndenumerate(flat):
        if np.isfinite(value):
            ax.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle
    truth = [Rectangle((j * n_sev + int(t) - 0.5, i - 0.5), 1, 1)
             for (i, j), t in np.ndenumerate(grid.truth) if t >= 0]
    if truth:
        ax.add_collection(PatchCollection(truth, facecolor="none", edgecolor="#ff3b30", linewidth=1.4))
    for j in range(1, n_lev):
        ax.axvline(j * n_sev - 0.5, color="black", linewidth=1.0)
    ax.set_yticks(range(n_cond), [CONDITION_SHORT[c] for c in CONDITIONS], fontsize=6)
    ax.set_xticks([j * n_sev + 1 for j in range(n_lev)], [LEVEL_NAMES[lv] for lv in LEVELS], fontsize=6)
    ax.tick_params(length=0, pad=1)
    sev = "/".join(s.split("/")[0][0] for s in SEVERITIES)
    labelled = int((grid.truth >= 0).sum())
    ax.set_title(f"probability % ({sev} per level); red box: truth ({labelled} labelled)",
                 fontsize=7, pad=2)
