"""Everything a study sheet shows, computed without drawing (``plan_sheet`` -> ``SheetPlan``,
which tests and the galleries read): the image panels, the crop montage of every level and
the probabilities against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spinepipe.constants import CONDITIONS, LEVELS, SAGITTAL_T2, SUBMISSION_COLUMNS
from spinepipe.qa.montage import CropMontage, crop_montage
from spinepipe.qa.panels import (
    CANAL,
    ImagePanel,
    axial_panel,
    canal_panel,
    find_midline,
    foramen_panel,
)
from spinepipe.qa.points import locate_points
from spinepipe.qa.types import StudyInputs


@dataclass(frozen=True)
class ProbabilityGrid:
    """Per condition (rows, ``CONDITIONS``) and level (``LEVELS``): the three severity
    probabilities (NaN: no prediction) and the true severity (-1: unknown)."""

    probs: NDArray[np.float64]   # (5 conditions, 5 levels, 3)
    truth: NDArray[np.int64]     # (5, 5)


@dataclass(frozen=True)
class SheetPlan:
    """What the sheet shows, computed without drawing (tests read it)."""

    title: str
    canal: ImagePanel
    foramina: dict[str, ImagePanel]          # "left", "right"
    axial: dict[str, ImagePanel]             # by level "l1_l2"
    crops: dict[str, CropMontage]            # by level
    grid: ProbabilityGrid
    midline: tuple[float, float, float] | None


def probability_grid(inputs: StudyInputs) -> ProbabilityGrid:
    """The study's probabilities and truth as arrays (conditions x levels x severities)."""
    probs = np.full((len(CONDITIONS), len(LEVELS), len(SUBMISSION_COLUMNS)), np.nan)
    truth = np.full((len(CONDITIONS), len(LEVELS)), -1, dtype=np.int64)
    by_row: dict[str, tuple[float, ...]] = {}
    if inputs.probabilities is not None and inputs.probabilities.height:
        frame = inputs.probabilities.select("row_id", *SUBMISSION_COLUMNS)
        by_row = {r[0]: tuple(r[1:]) for r in frame.iter_rows()}
    for i, condition in enumerate(CONDITIONS):
        for j, level in enumerate(LEVELS):
            key = f"{inputs.study_id}_{condition}_{level}"
            if key in by_row:
                probs[i, j] = [np.nan if v is None else v for v in by_row[key]]
            truth[i, j] = inputs.truth.get(key, -1)
    return ProbabilityGrid(probs, truth)


def plan_sheet(inputs: StudyInputs) -> SheetPlan:
    """Every panel of the sheet, with its points in displayed pixels and its labels."""
    canal, canal_series, canal_index = canal_panel(inputs)
    midline, midline_source = find_midline(inputs, canal_series, canal_index)
    foramina = {side: foramen_panel(inputs, side, midline) for side in ("left", "right")}
    canal_points = (locate_points(inputs, inputs.predicted, [CANAL], description=SAGITTAL_T2)
                    or locate_points(inputs, inputs.annotated, [CANAL]))
    axial = {level: axial_panel(inputs, level, canal_points) for level in LEVELS}
    crops = {level: crop_montage(level, inputs.crops) for level in LEVELS}
    title = inputs.title or f"study {inputs.study_id}"
    if midline_source and midline_source != "canal slice":
        title += f" (mid-line {midline_source})"
    return SheetPlan(title, canal, foramina, axial, crops, probability_grid(inputs),
                     None if midline is None else tuple(float(v) for v in midline))
