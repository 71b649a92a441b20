"""Galleries of what needs a look: one contact sheet (PNG) per kind of suspicious case.

Where a study sheet (``spinepipe.qa.sheet``) shows everything about one study, a gallery shows
one thing about many: the cases a run flags, most important first, one tile each. Cases are
chosen by pure polars functions from files a run already wrote; every selection returns the
same columns (``CASE_SCHEMA``: ``gallery, study_id, condition, level, value, note, row_id,
series_id``), so the galleries can be concatenated into one CSV beside the images
(``cases_table``). The galleries:

- ``localization_errors`` (``results/localize/label_noise.csv``): the annotations farthest from
  their out-of-fold predicted point. Tile: the annotated point's own series and slice with
  the annotation (green x) and the prediction of the same condition and level (red o; hollow
  when it lies on another slice, projected through patient space) joined by a line.
- ``label_noise``: the same, only the annotations flagged as label noise (over the
  threshold), largest first.
- ``confident_wrong`` (``results/eval/oof_end_to_end.csv`` against the labels): rows whose most
  probable severity is not the true one, by the probability of that wrong severity. Tile: the
  crops the severity models read at that level (the condition's model rows outlined), with
  the probabilities and the truth.
- ``degraded`` (``results/eval/degraded_rows.csv``): every row graded with a fallback, with
  its reason; tile: the study's canal slice (or its first available slice) when images exist.

As on the study sheet, **left and right follow the patient**: image edges are labelled from
the slice's direction cosines, sagittal slices state their side of the mid-line from their
position. A case whose study has no inputs gets a text tile; an empty gallery still writes a
small PNG that says "nothing to show".

Tiles are planned without drawing (``plan_tile`` returns a ``TilePlan``, which tests read),
then drawn with a few ``imshow``/``scatter`` calls each; a dozen tiles take a fraction of a
second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from spinepipe.constants import (
    AXIAL_T2,
    CONDITION_FAMILY,
    CONDITION_NAMES,
    LEVEL_NAMES,
    LEVELS,
    SUBMISSION_COLUMNS,
    split_row_id,
)
from spinepipe.qa.sheet import (
    _GAP,
    _LABEL_BOX,
    CROP_ROWS,
    CropMontage,
    ImagePanel,
    StudyInputs,
    _canal_panel,
    _draw_montage,
    _draw_panel,
    _located,
    _midline,
    _pairs,
    _panel,
    _pyplot,
    _wrap,
    crop_montage,
    plan_sheet,
    sagittal_side_text,
)

log = logging.getLogger(__name__)

#: Gallery name -> contact sheet title.
GALLERIES: dict[str, str] = {
    "localization_errors": "Largest localization errors (annotation vs out-of-fold prediction)",
    "label_noise": "Annotations flagged as label noise",
    "confident_wrong": "Confidently wrong severities (out-of-fold)",
    "degraded": "Submission rows graded with a fallback",
}

#: Columns (and types) of every case frame.
CASE_SCHEMA: dict[str, pl.DataType] = {
    "gallery": pl.String(), "study_id": pl.Int64(), "condition": pl.String(), "level": pl.String(),
    "value": pl.Float64(), "note": pl.String(), "row_id": pl.String(), "series_id": pl.Int64(),
}

# Inverse name maps: "Left Neural Foraminal Narrowing" -> condition key, "L1/L2" -> "l1_l2".
CONDITION_KEYS: dict[str, str] = {name: key for key, name in CONDITION_NAMES.items()}
LEVEL_KEYS: dict[str, str] = {name: key for key, name in LEVEL_NAMES.items()}


# Tile geometry in inches: a header of case text, then the panel (with its own title).
_TILE_W, _TILE_H, _HEADER_H, _FIG_HEADER_H = 3.0, 3.6, 0.62, 0.55
#: Tallest contact sheet drawn (pixels; Agg refuses images over 2**16): cases beyond it are
#: left out of the image (not of the case table) and the title says how many.
MAX_IMAGE_PIXELS = 32_000
_MIN_WIDTH = 7.5  # inches: room for the title and legend above one or two tiles
_TEXT_FACE = "#eeeeee"
_FAMILY_OUTLINE = "#ff9f0a"


# --------------------------------------------------------------------------- row ids


def parse_row_id(row_id: str) -> tuple[int, str, str]:
    """``"36119832_left_neural_foraminal_narrowing_l1_l2"`` -> ``(36119832, "Left Neural
    Foraminal Narrowing", "L1/L2")``; ValueError for anything else."""
    study, condition, level = split_row_id(row_id)
    return study, CONDITION_NAMES[condition], LEVEL_NAMES[level]


def _parse_or_none(row_id: str) -> tuple[int | None, str | None, str | None]:
    try:
        return parse_row_id(row_id)
    except ValueError:
        return None, None, None


# --------------------------------------------------------------------------- selection


def _case_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts with any subset of ``CASE_SCHEMA``) as a case frame, in that column order."""
    return pl.DataFrame([{k: r.get(k) for k in CASE_SCHEMA} for r in rows], schema=CASE_SCHEMA)


def _distance_cases(noise: pl.DataFrame, gallery: str, n: int, prefix: str) -> pl.DataFrame:
    top = (noise.filter(pl.col("distance_mm").is_not_null() & pl.col("distance_mm").is_finite())
           .sort(["distance_mm", "study_id", "condition", "level"],
                 descending=[True, False, False, False])
           .head(max(n, 0)))
    return _case_frame([
        {"gallery": gallery, "study_id": r["study_id"], "condition": r["condition"],
         "level": r["level"], "value": float(r["distance_mm"]),
         "note": f"{prefix}annotation {r['distance_mm']:.1f} mm from the out-of-fold prediction",
         "series_id": r.get("series_id"),
         "row_id": _row_id_of(r["study_id"], r["condition"], r["level"])}
        for r in top.iter_rows(named=True)])


def _row_id_of(study_id: int | None, condition: str | None, level: str | None) -> str | None:
    if study_id is None or condition not in CONDITION_KEYS or level not in LEVEL_KEYS:
        return None
    return f"{study_id}_{CONDITION_KEYS[condition]}_{LEVEL_KEYS[level]}"


def localization_error_cases(label_noise: pl.DataFrame, n: int) -> pl.DataFrame:
    """Gallery "localization_errors": the ``n`` annotations farthest (``distance_mm``, in the
    annotated slice's plane) from their out-of-fold prediction, largest first."""
    return _distance_cases(label_noise, "localization_errors", n, "")


def label_noise_cases(label_noise: pl.DataFrame, n: int) -> pl.DataFrame:
    """Gallery "label_noise": the annotations flagged ``noisy`` (over the label-noise
    threshold), largest distance first, at most ``n``."""
    noisy = pl.col("noisy")
    if label_noise.schema["noisy"] == pl.String:  # a CSV read without type inference
        noisy = noisy.str.to_lowercase() == "true"
    return _distance_cases(label_noise.filter(noisy.fill_null(False)), "label_noise", n,
                           "label noise: ")


def confident_wrong_cases(oof: pl.DataFrame, labels_long: pl.DataFrame, n: int) -> pl.DataFrame:
    """Gallery "confident_wrong": labelled rows whose most probable severity is not the true
    one, by that (wrong) probability, highest first (probabilities normalised per row, as
    the metric does). Unlabelled rows and rows without a probability are left out."""
    columns = list(SUBMISSION_COLUMNS)
    joined = (oof.select("row_id", *columns)
              .join(labels_long.select("row_id", pl.col("target").cast(pl.Int64)), on="row_id",
                    how="inner")
              .filter(pl.col("target").is_not_null()
                      & pl.all_horizontal([pl.col(c).is_not_null() for c in columns])))
    if joined.height == 0:
        return _case_frame([])
    probs = joined.select(columns).to_numpy().astype(np.float64)
    total = probs.sum(axis=1, keepdims=True)
    probs = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
    predicted = probs.argmax(axis=1)
    scored = joined.with_columns(pl.Series("predicted", predicted, dtype=pl.Int64),
                                 pl.Series("confidence", probs.max(axis=1)),
                                 pl.Series("p", probs.tolist(), dtype=pl.List(pl.Float64)))
    wrong = (scored.filter(pl.col("predicted") != pl.col("target"))
             .sort(["confidence", "row_id"], descending=[True, False]).head(max(n, 0)))
    rows = []
    for r in wrong.iter_rows(named=True):
        study, condition, level = _parse_or_none(r["row_id"])
        p = " / ".join(f"{v:.2f}" for v in r["p"])
        rows.append({"gallery": "confident_wrong", "study_id": study, "condition": condition,
                     "level": level, "value": float(r["confidence"]), "row_id": r["row_id"],
                     "note": (f"predicted {columns[r['predicted']]} {r['confidence']:.2f}, "
                              f"truth {columns[r['target']]} (p = {p})")})
    return _case_frame(rows)


def degraded_cases(degraded: pl.DataFrame, n: int | None = None) -> pl.DataFrame:
    """Gallery "degraded": every row graded with a fallback (the first ``n`` when given), in
    the file's order; value 0.0, note "reason -> fallback"."""
    frame = degraded if n is None else degraded.head(max(n, 0))
    rows = []
    for r in frame.iter_rows(named=True):
        study, condition, level = _parse_or_none(r["row_id"])
        rows.append({"gallery": "degraded", "study_id": study, "condition": condition,
                     "level": level, "value": 0.0, "row_id": r["row_id"],
                     "note": f"{r['reason']} -> {r['fallback']}"})
    return _case_frame(rows)


def cases_table(*frames: pl.DataFrame) -> pl.DataFrame:
    """The case frames of several galleries as one table (``CASE_SCHEMA``), in the order given."""
    if not frames:
        return _case_frame([])
    return pl.concat([f.select([pl.col(c).cast(t) for c, t in CASE_SCHEMA.items()]) for f in frames])


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class TilePlan:
    """What one tile shows, computed without drawing.

    ``kind``: "image" (``panel``, a slice with its points), "montage" (``montage``, the crops
    of one level; ``family_rows``: its rows read by the case's condition model) or "text".
    ``header`` is the case's own text, above the panel.
    """

    kind: Literal["image", "montage", "text"]
    header: str
    panel: ImagePanel | None = None
    montage: CropMontage | None = None
    family_rows: tuple[int, ...] = ()
    text: str | None = None


def _case_title(case: Mapping[str, Any]) -> str:
    study = case.get("study_id")
    what = " ".join(str(v) for v in (case.get("condition"), case.get("level")) if v)
    return f"{study if study is not None else '?'} · {what or case.get('row_id') or '?'}"


def _localization_tile(case: Mapping[str, Any], inputs: StudyInputs, header: str) -> TilePlan:
    """The annotated point's series and slice, with the annotation and the prediction of the
    same condition and level on it (the prediction projected through patient space)."""
    condition, level = case.get("condition"), case.get("level")
    annotated = _located(inputs, inputs.annotated, [condition], level)
    if case.get("series_id") is not None:  # the annotation the distance was measured for
        annotated = [p for p in annotated if p.series_id == case["series_id"]] or annotated
    predicted = _located(inputs, inputs.predicted, [condition], level)
    anchor = annotated[0] if annotated else (predicted[0] if predicted else None)
    if anchor is None:
        return TilePlan("text", header, text="no annotated or predicted point of this\n"
                                             "condition and level in the study's inputs")
    series = inputs.series[anchor.series_id]
    index = anchor.index
    pairs = _pairs(series, index, predicted[:1], annotated[:1], [(condition, level, level)])
    side_text = None
    if series.description != AXIAL_T2:  # sagittal: side of the mid-line, from the position
        _, canal_series, canal_index = _canal_panel(inputs)
        midline, _ = _midline(inputs, canal_series, canal_index)
        side_text = sagittal_side_text(series.geometry, index, midline)
    note = None if annotated else "no annotation in the inputs: predicted slice"
    short = "Sagittal T2" if series.description.startswith("Sagittal T2") else series.description
    panel = _panel(series, index, f"{short} {series.series_id}", pairs, side_text, note=note)
    return TilePlan("image", header, panel=panel)


def _confident_wrong_tile(case: Mapping[str, Any], inputs: StudyInputs, header: str) -> TilePlan:
    """The crops the severity models read at the case's level."""
    level = LEVEL_KEYS.get(case.get("level") or "")
    if level is None:
        return TilePlan("text", header, text=f"unknown level {case.get('level')!r}")
    family = CONDITION_FAMILY.get(CONDITION_KEYS.get(case.get("condition") or "", ""))
    rows = tuple(i for i, (model, _) in enumerate(CROP_ROWS) if model == family)
    text = None if inputs.crops else "no crops cached for this study"
    return TilePlan("montage", header, montage=crop_montage(level, inputs.crops),
                    family_rows=rows, text=text)


def _degraded_tile(case: Mapping[str, Any], inputs: StudyInputs, header: str) -> TilePlan:
    """The study's canal slice, else the first slice of the sheet that has an image."""
    plan = plan_sheet(inputs)
    panels = [plan.canal, plan.foramina["left"], plan.foramina["right"],
              *(plan.axial[lv] for lv in LEVELS)]
    panel = next((p for p in panels if p.image is not None), None)
    if panel is None:
        return TilePlan("text", header, text="no images cached for this study")
    return TilePlan("image", header, panel=replace(panel, pairs=(), markers=()))


def plan_tile(case: Mapping[str, Any], inputs: StudyInputs | None) -> TilePlan:
    """What the tile of one case (a row of a case frame, as a dict) shows."""
    gallery = case.get("gallery")
    note = str(case.get("note") or "")
    if gallery in ("localization_errors", "label_noise"):
        value = case.get("value")
        distance = "" if value is None else f" · {value:.1f} mm"
        header = f"{_case_title(case)}{distance}\n{_wrap(note, 52, 2)}"
    elif gallery == "degraded":
        header = f"{case.get('row_id') or _case_title(case)}\n{_wrap(note, 58, 4)}"
    else:
        header = f"{_case_title(case)}\n{_wrap(note, 52, 3)}"
    if inputs is None:
        return TilePlan("text", header, text=f"no inputs for study {case.get('study_id')}")
    if gallery in ("localization_errors", "label_noise"):
        return _localization_tile(case, inputs, header)
    if gallery == "confident_wrong":
        return _confident_wrong_tile(case, inputs, header)
    if gallery == "degraded":
        return _degraded_tile(case, inputs, header)
    return TilePlan("text", header, text=f"unknown gallery {gallery!r}")


# --------------------------------------------------------------------------- drawing


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
    _draw_montage(ax, montage, labels=False)
    h, w = montage.tile
    width = montage.image.shape[1]
    for r, view in enumerate(montage.views):
        ax.text(1, r * (h + _GAP) + 1, view.split(": ")[-1], fontsize=5, ha="left", va="top", color="white",
                bbox=_LABEL_BOX, clip_on=True)
    from matplotlib.patches import Rectangle
    for r in plan.family_rows:
        ax.add_patch(Rectangle((-0.5, r * (h + _GAP) - 0.5), width, h, facecolor="none",
                               edgecolor=_FAMILY_OUTLINE, linewidth=1.2))
    if plan.text:
        ax.text(0.5, 0.02, plan.text, transform=ax.transAxes, ha="center", va="bottom",
                fontsize=6, color="#ffcc00", bbox=_LABEL_BOX)


def draw_tile(ax, plan: TilePlan) -> None:
    """Draw a planned tile's body (not its header) on ``ax``."""
    if plan.kind == "image" and plan.panel is not None:
        _draw_panel(ax, plan.panel)
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
    plt = _pyplot()
    fig = plt.figure(figsize=(4.0, 1.5))
    fig.text(0.5, 0.7, title, ha="center", va="center", fontsize=10)
    fig.text(0.5, 0.35, "nothing to show", ha="center", va="center", fontsize=10, color="#666666")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def render_gallery(cases: pl.DataFrame, inputs_for: Callable[[int], StudyInputs | None],
                   path: Path, title: str, columns: int = 4, dpi: int = 80) -> int:
    """Draw one contact sheet of ``cases`` (a case frame, in its order) to ``path`` (PNG;
    parent folders created); return the number of tiles drawn.

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
            plans.append(TilePlan("text", _case_title(case), text=_wrap(f"could not draw: {error}")))

    rows = -(-len(plans) // columns)
    fig_w, fig_h = max(columns * _TILE_W, _MIN_WIDTH), rows * _TILE_H + _FIG_HEADER_H
    plt = _pyplot()
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
    legend = _wrap(legend + " · edge letters: patient directions", int(fig_w * 15), 2)
    fig.text(0.01, 1 - 0.3 / fig_h, legend, ha="left", va="top", fontsize=6.5, color="#555555")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    log.info("%s: %d tiles", path, len(plans))
    return len(plans)
