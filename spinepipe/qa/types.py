"""What a study sheet or gallery tile is drawn from: one study's series, points, crops and
probabilities (``StudyInputs``), as plain data.

``spinepipe.qa.inputs`` fills these from a run's files; the planning modules read them. Nothing
here draws or loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from spinepipe.geometry import StackGeometry


@dataclass(frozen=True)
class SeriesStack:
    """One series of the study: its geometry and (optionally) its localizer stack.

    ``images`` are in the geometry's slice order (position along the normal, the order of
    ``StackCache`` stacks), resized to any square or rectangular size; ``scale`` converts
    image pixels to DICOM pixels (x, y), as ``StackCache`` stores it (derived from the
    geometry's matrix when None). ``images`` None: geometry only (points on it can still be
    measured, not shown).
    """

    series_id: int
    description: str
    geometry: StackGeometry
    images: NDArray[Any] | None = None
    scale: tuple[float, float] | None = None
    slice_ok: NDArray[np.bool_] | None = None

    def image_scale(self, index: int) -> tuple[float, float]:
        """DICOM pixels per displayed image pixel (x, y) of slice ``index``."""
        if self.scale is not None:
            return float(self.scale[0]), float(self.scale[1])
        if self.images is None:
            return 1.0, 1.0
        return (float(self.geometry.columns[index]) / self.images.shape[2],
                float(self.geometry.rows[index]) / self.images.shape[1])

    def aspect(self, index: int) -> float:
        """imshow aspect that makes the displayed millimetres square."""
        sx, sy = self.image_scale(index)
        row_mm, col_mm = self.geometry.pixel_spacing[index]
        return float((sy * row_mm) / (sx * col_mm))


@dataclass(frozen=True)
class CropView:
    """One cached crop as the crop stage stored it: (slices, size, size), slice mask, status.

    ``slices``/``margin`` (``crops.slices``/``crops.margin``) mark what the model reads of
    it without jitter: the middle ``2 * slices + 1`` slices and the inner window; None/0:
    all of it.
    """

    image: NDArray[Any]
    mask: NDArray[np.bool_]
    status: str = "ok"
    slices: int | None = None
    margin: int = 0


@dataclass
class StudyInputs:
    """Everything one sheet shows, for one study.

    - ``series``: by series_id, every series with a geometry (``SeriesStack``).
    - ``predicted``: localizer points (``PREDICTION_SCHEMA``; used: series_id, condition,
      level as ``"L1/L2"``, instance_number, x, y in DICOM pixels).
    - ``annotated``: annotated points (``read_coordinates`` columns), or None.
    - ``crops``: ``(level, view)`` -> ``CropView``, level as in ``LEVELS`` (``"l1_l2"``).
    - ``probabilities``: submission-like rows (``row_id``, ``normal_mild``, ``moderate``,
      ``severe``), or None.
    - ``truth``: ``row_id`` -> 0/1/2 index of ``SEVERITIES`` (labelled rows only).
    - ``notes``: series description -> why it is missing or incomplete (shown on the sheet).
    - ``foramen_offset_mm``: config ``geometry.foramen_offset_mm`` (keyword only, no default):
      where a foramen panel without foramen points looks, from the mid-line.
    """

    study_id: int
    series: dict[int, SeriesStack] = field(default_factory=dict)
    predicted: pl.DataFrame | None = None
    annotated: pl.DataFrame | None = None
    crops: dict[tuple[str, str], CropView] = field(default_factory=dict)
    probabilities: pl.DataFrame | None = None
    truth: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    title: str | None = None
    foramen_offset_mm: float = field(kw_only=True)
