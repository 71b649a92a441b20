"""Galleries of what needs a look: one contact sheet (PNG) per kind of suspicious case
(``render_gallery``), a tile per case, most important first.

The cases come from ``spinepipe.qa.cases``, each tile's content from ``spinepipe.qa.tiles``
(planned without drawing); here the tiles are laid out and drawn, with a few
``imshow``/``scatter`` calls each, so a dozen tiles take a fraction of a second. A case that
cannot be drawn gets a text tile saying why; an empty gallery still writes a small PNG that
says "nothing to show".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl

from spinepipe.qa.drawing import LABEL_BOX, draw_montage, draw_panel, pyplot
from spinepipe.qa.montage import GAP
from spinepipe.qa.panels import wrap_text
from spinepipe.qa.tiles import TilePlan, case_title, plan_tile
from spinepipe.qa.types import StudyInputs

log = logging.getLogger(__name__)

# Tile geometry in inches: a header of case text, then the panel (with its own title).
_TILE_W, _TILE_H, _HEADER_H, _FIG_HEADER_H = 3.0, 3.6, 0.62, 0.55
#: Tallest contact sheet drawn (pixels; Agg refuses images over 2**16): cases beyond it are
#: left out of the image (not of the case table) and the title says how many.
MAX_IMAGE_PIXELS = 32_000
_MIN_WIDTH = 7.5  # inches: room for the title and legend above one or two tiles
_TEXT_FACE = "#eeeeee"
_FAMILY_OUTLINE = "#ff9f0a"


def _text_axes(ax, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor(_TEXT_FACE)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="#444444",
            transform=ax.transAxes)


def _draw_case_montage(ax, plan: TilePlan) -> None:
    """The montage without tick labels (no room in a tile), rows named inside the image and
    the condition's model rows outlined."""
    montage = plan.montage
    assert montage is not None
    draw_montage(ax, montage, labels=False)
    h, w = montage.tile
    width = montage.image.shape[1]
    for r, view in enumerate(montage.views):
        ax.text(1, r * (h + GAP) + 1, view.split(": ")[-1], fontsize=5, ha="left", va="top", color="white",
                bbox=LABEL_BOX, clip_on=True)
    from matplotlib.patches import Rectangle
    for r in plan.family_rows:
        ax.add_patch(Rectangle((-0.5, r * (h + GAP) - 0.5), width, h, facecolor="none",
                               edgecolor=_FAMILY_OUTLINE, linewidth=1.2))
    if plan.text:
        ax.text(0.5, 0.02, plan.text, transform=ax.transAxes, ha="center", va="bottom",
                fontsize=6, color="#ffcc00", bbox=LABEL_BOX)


def draw_tile(ax, plan: TilePlan) -> None:
    """Draw a planned tile's body (not its header) on ``ax``."""
    if plan.kind == "image" and plan.panel is not None:
        draw_panel(ax, plan.panel)
    elif plan.kind == "montage" and plan.montage is not None:
        _draw_case_montage(ax, plan)
    else:
        _text_axes(ax, plan.text or "nothing to show")


_LEGEND = {
    "localization_errors": "green x: annotation · red o: out-of-fold prediction (hollow: on another "
                           "slice) · line: their distance in patient space",
    "label_noise": "green x: annotation · red o: out-of-fold prediction (hollow: on another slice) · "
                   "line: their distance in patient space",
    "confident_wrong": "crops at the level: rows = views, columns = slices; orange box: the rows "
                       "the condition's model reads",
    "degraded": "rows graded with a fallback: reason -> fallback",
}


def _nothing_to_show(path: Path, title: str, dpi: int) -> None:
    plt = pyplot()
    fig = plt.figure(figsize=(4.0, 1.5))
    fig.text(0.5, 0.7, title, ha="center", va="center", fontsize=10)
    fig.text(0.5, 0.35, "nothing to show", ha="center", va="center", fontsize=10, color="#666666")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def render_gallery(cases: pl.DataFrame, inputs_for: Callable[[int], StudyInputs | None],
                   path: Path, title: str, columns: int = 4, *, dpi: int) -> int:
    """Draw one contact sheet of ``cases`` (a case frame, in its order) to ``path`` (PNG;
    parent folders created) at ``dpi`` (config ``qa.dpi``); return the number of tiles drawn.

    ``inputs_for(study_id)`` gives a study's ``StudyInputs`` (None: none; called once per
    study). A case that cannot be drawn gets a text tile saying why, never an exception; no
    case at all gives a small "nothing to show" image. A sheet is at most
    ``MAX_IMAGE_PIXELS`` tall: the cases beyond that are not drawn, and the title says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cases.height == 0:
        _nothing_to_show(path, title, dpi)
        log.info("%s: nothing to show", path)
        return 0
    columns = max(1, min(columns, cases.height))
    max_rows = max(1, int((MAX_IMAGE_PIXELS / dpi - _FIG_HEADER_H) // _TILE_H))
    drawn = cases.head(max_rows * columns)
    if drawn.height < cases.height:
        log.warning("%s: %d of %d cases drawn (image size limit)", path, drawn.height, cases.height)
    cache: dict[int, StudyInputs | None] = {}
    plans: list[TilePlan] = []
    for case in drawn.iter_rows(named=True):
        study = case.get("study_id")
        try:
            if study is not None and study not in cache:
                cache[study] = inputs_for(int(study))
            plans.append(plan_tile(case, None if study is None else cache[study]))
        except Exception as error:  # one broken study must not lose the whole gallery
            log.warning("gallery %s: study %s: %s", title, study, error, exc_info=True)
            plans.append(TilePlan("text", case_title(case), text=wrap_text(f"could not draw: {error}")))

    rows = -(-len(plans) // columns)
    fig_w, fig_h = max(columns * _TILE_W, _MIN_WIDTH), rows * _TILE_H + _FIG_HEADER_H
    plt = pyplot()
    fig = plt.figure(figsize=(fig_w, fig_h))
    for i, plan in enumerate(plans):
        r, c = divmod(i, columns)
        left, top = c * _TILE_W, _FIG_HEADER_H + r * _TILE_H   # inches from the top-left corner
        fig.text((left + 0.08) / fig_w, 1 - (top + 0.05) / fig_h, plan.header, ha="left", va="top",
                 fontsize=6.5, color="#222222", linespacing=1.15)
        ax_top = top + _HEADER_H + 0.28  # room for the panel's own title
        ax = fig.add_axes(((left + 0.12) / fig_w, 1 - (top + _TILE_H - 0.08) / fig_h,
                           (_TILE_W - 0.24) / fig_w, (top + _TILE_H - 0.08 - ax_top) / fig_h))
        draw_tile(ax, plan)
    kinds = list(dict.fromkeys(cases["gallery"].drop_nulls().to_list()))
    legend = " | ".join(dict.fromkeys(_LEGEND[k] for k in kinds if k in _LEGEND))
    count = f"{cases.height} case{'s' * (cases.height != 1)}"
    if len(plans) < cases.height:
        count = f"first {len(plans)} of {count} drawn; all in the case table"
    fig.text(0.01, 1 - 0.06 / fig_h, f"{title} ({count})", ha="left", va="top", fontsize=9)
    legend = wrap_text(legend + " · edge letters: patient directions", int(fig_w * 15), 2)
    fig.text(0.01, 1 - 0.3 / fig_h, legend, ha="left", va="top", fontsize=6.5, color="#555555")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    log.info("%s: %d tiles", path, len(plans))
    return len(plans)
