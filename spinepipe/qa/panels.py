"""The image panels of a study sheet, planned without drawing: which series and slice each
shows, its points in displayed pixels, its edge labels and its notes.

- the Sagittal T2/STIR canal slice with the five predicted level points (``canal_panel``);
- the left and right Sagittal T1 foramen slices with theirs (``foramen_panel``); a panel
  whose position contradicts its condition's side is flagged (``warning``, titled in red);
- each level's axial slice with the left and right recess points, and the sagittal canal
  point projected onto it with its distance from the slice (``axial_panel``).

A panel shows the slice most predicted points lie on (else most annotated points); without
any, a fallback slice chosen from the geometry, and a note saying so. A series, slice or
point that is missing gives a panel with a note, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spinepipe.constants import (
    AXIAL_T2,
    CONDITION_NAMES,
    LEVEL_NAMES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
)
from spinepipe.qa.orientation import (
    MIDLINE_TOLERANCE_MM,
    patient_side_labels,
    patient_vertical_labels,
    sagittal_offset_mm,
    sagittal_side_text,
)
from spinepipe.qa.points import (
    LocatedPoint,
    PointPair,
    first_point,
    locate_points,
    mode_slice,
    place_point,
    point_pairs,
)
from spinepipe.qa.types import SeriesStack, StudyInputs

CANAL = CONDITION_NAMES["spinal_canal_stenosis"]
FORAMEN = {side: CONDITION_NAMES[f"{side}_neural_foraminal_narrowing"] for side in ("left", "right")}
RECESS = {side: CONDITION_NAMES[f"{side}_subarticular_stenosis"] for side in ("left", "right")}
SIDE_LETTER = {"left": "L", "right": "R"}


@dataclass(frozen=True)
class ImagePanel:
    """One slice as displayed, or a note saying why there is none."""

    title: str
    image: NDArray[np.float32] | None = None
    aspect: float = 1.0
    edge_labels: tuple[str, str] | None = None       # image left, right
    vertical_labels: tuple[str, str] | None = None   # image top, bottom
    side_text: str | None = None
    warning: bool = False
    pairs: tuple[PointPair, ...] = ()
    markers: tuple[tuple[float, float, str], ...] = ()  # extra marks (x, y, label)
    note: str | None = None
    series_id: int | None = None
    slice_index: int | None = None


def wrap_text(text: str, width: int = 34, max_lines: int = 4) -> str:
    """``text`` broken into lines of at most ``width`` characters (words kept whole), at most
    ``max_lines`` of them (" ..." when cut)."""
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:max_lines]) + (" ..." if len(lines) > max_lines else "")


def _series_of(inputs: StudyInputs, description: str) -> list[SeriesStack]:
    return [s for s in inputs.series.values() if s.description == description]


def _slice_image(series: SeriesStack, index: int) -> tuple[NDArray[np.float32] | None, str | None]:
    if series.images is None:
        return None, f"series {series.series_id}: no stack (pixels not cached)"
    image = np.asarray(series.images[index], dtype=np.float32)
    if series.slice_ok is not None and not bool(series.slice_ok[index]):
        return image, f"slice {index} could not be decoded"
    return image, None


def _missing_note(inputs: StudyInputs, description: str) -> str:
    short = "Sagittal T2" if description == SAGITTAL_T2 else description
    reason = inputs.notes.get(description)
    return f"no {short}" + (f"\n{wrap_text(reason)}" if reason else "")


def image_panel(series: SeriesStack, index: int, title: str, pairs: tuple[PointPair, ...],
                side_text: str | None = None, warning: bool = False,
                markers: tuple[tuple[float, float, str], ...] = (),
                note: str | None = None) -> ImagePanel:
    """Slice ``index`` of ``series`` as a panel: its image, aspect, patient edge labels and
    ``pairs``; a slice without pixels or not decoded says so in the note."""
    image, problem = _slice_image(series, index)
    notes = "; ".join(n for n in (note, problem) if n)
    return ImagePanel(f"{title} · s{index}", image, series.aspect(index),
                      patient_side_labels(series.geometry, index),
                      patient_vertical_labels(series.geometry, index), side_text, warning, pairs,
                      markers, notes or None, series.series_id, index)


def find_midline(inputs: StudyInputs, canal_series: SeriesStack | None,
                 canal_index: int | None) -> tuple[NDArray[np.float64] | None, str]:
    """A point on the canal slice (its centre), the mid-line sagittal sides are measured
    from; without a canal slice, halfway between the left and right foramen points. Also
    says where it came from ("canal slice", "between the foramina", or "" when none)."""
    if canal_series is not None and canal_index is not None:
        g = canal_series.geometry
        centre = g.to_patient(canal_index, (g.columns[canal_index] - 1) / 2, (g.rows[canal_index] - 1) / 2)
        return centre, "canal slice"
    sides = {}
    for side, condition in FORAMEN.items():
        pts = (locate_points(inputs, inputs.predicted, [condition])
               or locate_points(inputs, inputs.annotated, [condition]))
        if pts:
            sides[side] = np.mean([p.patient for p in pts], axis=0)
    if len(sides) == 2:
        return (sides["left"] + sides["right"]) / 2, "between the foramina"
    return None, ""


def _choose_slice(inputs: StudyInputs, description: str, conditions: Sequence[str],
                  level: str | None = None) -> tuple[SeriesStack, int, str] | None:
    """The series and slice to display: where most predicted points lie, else annotated."""
    for frame, source in ((inputs.predicted, "predicted"), (inputs.annotated, "annotated")):
        choice = mode_slice(locate_points(inputs, frame, conditions, level, description))
        if choice is not None:
            return inputs.series[choice[0]], choice[1], source
    return None


def _sagittal_keys(condition: str) -> list[tuple[str, str, str]]:
    return [(condition, LEVEL_NAMES[lv], LEVEL_NAMES[lv]) for lv in LEVELS]


def canal_panel(inputs: StudyInputs) -> tuple[ImagePanel, SeriesStack | None, int | None]:
    """The Sagittal T2 canal panel, with the series and slice it shows (None, None: none)."""
    candidates = [s for s in _series_of(inputs, SAGITTAL_T2) if s.images is not None] or \
        _series_of(inputs, SAGITTAL_T2)
    if not candidates:
        return ImagePanel("Sagittal T2/STIR · canal", note=_missing_note(inputs, SAGITTAL_T2)), None, None
    choice = _choose_slice(inputs, SAGITTAL_T2, [CANAL])
    note = None
    if choice is None:
        series = candidates[0]
        positions = series.geometry.ipp @ series.geometry.normals[0]
        index = int(np.argmin(np.abs(positions - (positions.min() + positions.max()) / 2)))
        note = "no canal points: middle slice"
    else:
        series, index, _ = choice
    predicted = locate_points(inputs, inputs.predicted, [CANAL])
    annotated = locate_points(inputs, inputs.annotated, [CANAL])
    pairs = point_pairs(series, index, predicted, annotated, _sagittal_keys(CANAL))
    panel = image_panel(series, index, "Sagittal T2 · canal", pairs,
                        "canal slice (mid-line reference)", note=note)
    return panel, series, index


def foramen_panel(inputs: StudyInputs, side: str, midline: NDArray[np.float64] | None) -> ImagePanel:
    """The Sagittal T1 panel of the ``side`` ("left"/"right") foramen; without foramen points,
    the slice ``inputs.foramen_offset_mm`` from ``midline`` toward that side."""
    condition = FORAMEN[side]
    title = f"Sagittal T1 · {side} foramen"
    candidates = [s for s in _series_of(inputs, SAGITTAL_T1) if s.images is not None] or \
        _series_of(inputs, SAGITTAL_T1)
    if not candidates:
        return ImagePanel(title, note=_missing_note(inputs, SAGITTAL_T1))
    choice = _choose_slice(inputs, SAGITTAL_T1, [condition])
    note = None
    if choice is None:
        series = candidates[0]
        if midline is None:
            index = len(series.geometry) // 2
            note = "no foramen points, no mid-line: middle slice"
        else:
            offsets = series.geometry.left_offsets(midline)
            target = inputs.foramen_offset_mm * (1 if side == "left" else -1)
            index = int(np.argmin(np.abs(offsets - target)))
            note = f"no foramen points: slice nearest {target:+.0f} mm"
    else:
        series, index, _ = choice
    pairs = point_pairs(series, index, locate_points(inputs, inputs.predicted, [condition]),
                        locate_points(inputs, inputs.annotated, [condition]), _sagittal_keys(condition))
    side_text = sagittal_side_text(series.geometry, index, midline)
    warning = False
    if midline is not None:  # a check on the slice choice, not how anything is placed
        offset = sagittal_offset_mm(series.geometry, index, midline)
        warning = abs(offset) >= MIDLINE_TOLERANCE_MM and (offset > 0) != (side == "left")
        if warning:
            side_text += f" (not {side}!)"
    return image_panel(series, index, title, pairs, side_text, warning, note=note)


def axial_panel(inputs: StudyInputs, level: str, canal_points: list[LocatedPoint]) -> ImagePanel:
    """The Axial T2 panel of ``level`` ("l1_l2") with the recess points, and the canal point
    of ``canal_points`` at that level projected onto it."""
    name = LEVEL_NAMES[level]
    title = f"Axial T2 · {name}"
    axials = _series_of(inputs, AXIAL_T2)
    if not axials:
        return ImagePanel(title, note=_missing_note(inputs, AXIAL_T2))
    canal = first_point(canal_points, CANAL, name)
    choice = _choose_slice(inputs, AXIAL_T2, list(RECESS.values()), name)
    note = None
    if choice is None:
        if canal is None:
            return ImagePanel(title, note=f"no axial point at {name}\nand no canal point to project")
        # no recess point: the axial slice nearest the sagittal canal point, as the crops do
        series = min(axials, key=lambda s: abs(s.geometry.nearest(canal.patient)[1]))
        index = series.geometry.nearest(canal.patient)[0]
        note = "no recess points: slice nearest the canal point"
    else:
        series, index, _ = choice
    keys = [(RECESS[side], name, SIDE_LETTER[side]) for side in ("left", "right")]
    pairs = point_pairs(series, index, locate_points(inputs, inputs.predicted, RECESS.values(), name),
                        locate_points(inputs, inputs.annotated, RECESS.values(), name), keys)
    markers: tuple[tuple[float, float, str], ...] = ()
    side_text = None
    if canal is not None:
        placed = place_point(series, index, canal, "predicted")
        markers = ((placed.x, placed.y, "canal"),)
        side_text = f"canal point {abs(placed.off_plane_mm):.1f} mm off slice"
    return image_panel(series, index, title, pairs, side_text, markers=markers, note=note)
