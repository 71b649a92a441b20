"""What one gallery tile shows, planned without drawing (``plan_tile`` -> ``TilePlan``, which
tests read); ``spinepipe.qa.galleries`` draws the tiles.

- ``localization_errors`` / ``label_noise``: the annotated point's own series and slice with
  the annotation (green x) and the prediction of the same condition and level (red o; hollow
  when it lies on another slice, projected through patient space) joined by a line.
- ``confident_wrong``: the crops the severity models read at that level (the condition's model
  rows outlined), with the probabilities and the truth.
- ``degraded``: the study's canal slice (or its first available slice) when images exist.

As on the study sheet, **left and right follow the patient**: image edges are labelled from
the slice's direction cosines, sagittal slices state their side of the mid-line from their
position. A case whose study has no inputs gets a text tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from spinepipe.constants import AXIAL_T2, CONDITION_FAMILY, LEVELS
from spinepipe.qa.cases import CONDITION_KEYS, LEVEL_KEYS
from spinepipe.qa.montage import CROP_ROWS, CropMontage, crop_montage
from spinepipe.qa.orientation import sagittal_side_text
from spinepipe.qa.panels import ImagePanel, canal_panel, find_midline, image_panel, wrap_text
from spinepipe.qa.plan import plan_sheet
from spinepipe.qa.points import locate_points, point_pairs
from spinepipe.qa.types import StudyInputs


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


def case_title(case: Mapping[str, Any]) -> str:
    """"study · condition level" of a case (its row id, or "?", for what it lacks)."""
    study = case.get("study_id")
    what = " ".join(str(v) for v in (case.get("condition"), case.get("level")) if v)
    return f"{study if study is not None else '?'} · {what or case.get('row_id') or '?'}"


def _localization_tile(case: Mapping[str, Any], inputs: StudyInputs, header: str) -> TilePlan:
    """The annotated point's series and slice, with the annotation and the prediction of the
    same condition and level on it (the prediction projected through patient space)."""
    condition, level = case.get("condition"), case.get("level")
    annotated = locate_points(inputs, inputs.annotated, [condition], level)
    if case.get("series_id") is not None:  # the annotation the distance was measured for
        annotated = [p for p in annotated if p.series_id == case["series_id"]] or annotated
    predicted = locate_points(inputs, inputs.predicted, [condition], level)
    anchor = annotated[0] if annotated else (predicted[0] if predicted else None)
    if anchor is None:
        return TilePlan("text", header, text="no annotated or predicted point of this\n"
                                             "condition and level in the study's inputs")
    series = inputs.series[anchor.series_id]
    index = anchor.index
    pairs = point_pairs(series, index, predicted[:1], annotated[:1], [(condition, level, level)])
    side_text = None
    if series.description != AXIAL_T2:  # sagittal: side of the mid-line, from the position
        _, canal_series, canal_index = canal_panel(inputs)
        midline, _ = find_midline(inputs, canal_series, canal_index)
        side_text = sagittal_side_text(series.geometry, index, midline)
    note = None if annotated else "no annotation in the inputs: predicted slice"
    short = "Sagittal T2" if series.description.startswith("Sagittal T2") else series.description
    panel = image_panel(series, index, f"{short} {series.series_id}", pairs, side_text, note=note)
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
        header = f"{case_title(case)}{distance}\n{wrap_text(note, 52, 2)}"
    elif gallery == "degraded":
        header = f"{case.get('row_id') or case_title(case)}\n{wrap_text(note, 58, 4)}"
    else:
        header = f"{case_title(case)}\n{wrap_text(note, 52, 3)}"
    if inputs is None:
        return TilePlan("text", header, text=f"no inputs for study {case.get('study_id')}")
    if gallery in ("localization_errors", "label_noise"):
        return _localization_tile(case, inputs, header)
    if gallery == "confident_wrong":
        return _confident_wrong_tile(case, inputs, header)
    if gallery == "degraded":
        return _degraded_tile(case, inputs, header)
    return TilePlan("text", header, text=f"unknown gallery {gallery!r}")
