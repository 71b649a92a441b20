"""Predicted and annotated points of a study, located in patient space and placed on a
displayed slice.

A point row (x, y in DICOM pixels of its own slice) is taken to patient space through its own
series' geometry (``locate_points``), then projected onto whichever slice is displayed
(``place_point``): a point of another slice or series lands where it lies in space, and says
how far off the plane it is. A predicted point and its annotation make a ``PointPair``, with
their distance measured in patient space (mm), not in pixels of the displayed image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from numpy.typing import NDArray

from spinepipe.qa.types import SeriesStack, StudyInputs


@dataclass(frozen=True)
class PlacedPoint:
    """A point drawn on a displayed slice."""

    kind: Literal["predicted", "annotated"]
    condition: str
    level: str                  # "L1/L2"
    x: float                    # displayed image pixels
    y: float
    slice_index: int            # of the point's own slice, in its series
    on_slice: bool              # its own slice is the displayed one
    off_plane_mm: float         # distance of the point from the displayed plane
    patient: tuple[float, float, float]


@dataclass(frozen=True)
class PointPair:
    """A predicted point and its annotation (either may be absent), with their distance in
    patient space (mm)."""

    label: str
    predicted: PlacedPoint | None
    annotated: PlacedPoint | None
    distance_mm: float | None


@dataclass(frozen=True)
class LocatedPoint:
    """A point row in patient space, with the series and slice it was given on."""

    series_id: int
    index: int
    patient: NDArray[np.float64]
    condition: str
    level: str


def _rows(frame: pl.DataFrame | None, conditions: Iterable[str],
          level: str | None = None) -> list[dict[str, Any]]:
    if frame is None or frame.height == 0:
        return []
    selected = frame.filter(pl.col("condition").is_in(list(conditions)))
    if level is not None:
        selected = selected.filter(pl.col("level") == level)
    return list(selected.iter_rows(named=True))


def _locate(inputs: StudyInputs, row: dict[str, Any]) -> LocatedPoint | None:
    """A point row in patient space via its own series and slice; None when its series or
    slice is not known or a coordinate is missing."""
    series = inputs.series.get(row.get("series_id"))
    if series is None or row.get("x") is None or row.get("y") is None:
        return None
    try:
        index = series.geometry.index_of(int(row["instance_number"]))
    except (KeyError, TypeError):
        return None
    patient = series.geometry.to_patient(index, float(row["x"]), float(row["y"]))
    return LocatedPoint(int(row["series_id"]), index, patient, row["condition"], row["level"])


def locate_points(inputs: StudyInputs, frame: pl.DataFrame | None, conditions: Iterable[str],
                  level: str | None = None, description: str | None = None) -> list[LocatedPoint]:
    """The rows of ``frame`` of ``conditions`` (and ``level``, "L1/L2", when given) that can
    be located, optionally only those on a series of ``description``."""
    out = []
    for row in _rows(frame, conditions, level):
        located = _locate(inputs, row)
        if located is None:
            continue
        if description is not None and inputs.series[located.series_id].description != description:
            continue
        out.append(located)
    return out


def first_point(located: list[LocatedPoint], condition: str, level: str) -> LocatedPoint | None:
    """The first of ``located`` of ``condition`` at ``level``, or None."""
    return next((p for p in located if p.condition == condition and p.level == level), None)


def place_point(series: SeriesStack, index: int, point: LocatedPoint,
                kind: Literal["predicted", "annotated"]) -> PlacedPoint:
    """``point`` projected onto the displayed slice, in displayed image pixels."""
    x, y, off = series.geometry.plane(index).to_pixel(point.patient)
    sx, sy = series.image_scale(index)
    on_slice = point.series_id == series.series_id and point.index == index
    return PlacedPoint(kind, point.condition, point.level, float(x) / sx, float(y) / sy,
                       point.index, on_slice, float(off),
                       (float(point.patient[0]), float(point.patient[1]), float(point.patient[2])))


def point_pairs(series: SeriesStack, index: int, predicted: list[LocatedPoint],
                annotated: list[LocatedPoint],
                keys: Sequence[tuple[str, str, str]]) -> tuple[PointPair, ...]:
    """A pair per (condition, level, label) that has a predicted or an annotated point."""
    pairs = []
    for condition, level, label in keys:
        p, a = first_point(predicted, condition, level), first_point(annotated, condition, level)
        if p is None and a is None:
            continue
        distance = None if p is None or a is None else float(np.linalg.norm(p.patient - a.patient))
        pairs.append(PointPair(label, None if p is None else place_point(series, index, p, "predicted"),
                               None if a is None else place_point(series, index, a, "annotated"),
                               distance))
    return tuple(pairs)


def mode_slice(points: list[LocatedPoint]) -> tuple[int, int] | None:
    """(series_id, slice index) most points lie on (ties: nearest the points' median slice)."""
    if not points:
        return None
    counts = Counter((p.series_id, p.index) for p in points)
    median = float(np.median([p.index for p in points]))
    return min(counts, key=lambda k: (-counts[k], abs(k[1] - median), k))
