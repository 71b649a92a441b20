"""Patient directions of displayed slices: which patient side each image edge points to, and
which side of the mid-line a sagittal slice lies on.

**Left and right follow the patient, never the condition's name**: every image edge is
labelled with the patient direction it points to, computed from the slice's direction
cosines (``patient_side_labels``); axial images are shown as stored, so a feet-first stack
shows the patient's left on the image's left and says so. Each sagittal image states the
side of the mid-line it lies on, from its position relative to the canal slice
(``sagittal_side_text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spinepipe.geometry import StackGeometry

# Patient directions (LPS: +x left, +y posterior, +z superior): the name of each axis'
# negative and positive end.
_AXIS_NAMES: tuple[tuple[str, str], ...] = (("R", "L"), ("A", "P"), ("I", "S"))
MIDLINE_TOLERANCE_MM = 1.0   # a sagittal slice this close to the canal slice is "mid-line"


def direction_label(vector: Sequence[float] | NDArray[Any]) -> str:
    """Patient direction ("R"/"L", "A"/"P", "I"/"S") a vector mostly points to (LPS)."""
    v = np.asarray(vector, dtype=np.float64)
    axis = int(np.argmax(np.abs(v)))
    return _AXIS_NAMES[axis][int(v[axis] > 0)]


def patient_side_labels(geometry: StackGeometry, index: int) -> tuple[str, str]:
    """Patient direction of the image's left and right edges for slice ``index``.

    From the slice's row direction (the direction of increasing column): on an axial slice
    whose columns run towards the patient's left (``row_dir . (1, 0, 0) > 0``, head-first
    supine) the right edge is "L" and the left edge "R"; feet-first (columns towards the
    patient's right) the other way round. Sagittal rows give "A"/"P".
    """
    row_dir = geometry.row_dir[index]
    return direction_label(-row_dir), direction_label(row_dir)


def patient_vertical_labels(geometry: StackGeometry, index: int) -> tuple[str, str]:
    """Patient direction of the image's top and bottom edges (from the column direction)."""
    col_dir = geometry.col_dir[index]
    return direction_label(-col_dir), direction_label(col_dir)


def sagittal_offset_mm(geometry: StackGeometry, index: int, midline: NDArray[Any]) -> float:
    """Signed distance (mm) of slice ``index`` from the mid-line point, toward the
    patient's left (along the slice normal: the patient x axis for a sagittal slice)."""
    return float(geometry.left_offsets(midline)[index])


def sagittal_side_text(geometry: StackGeometry, index: int, midline: NDArray[Any] | None) -> str:
    """"patient left, 21 mm", "patient right, 20 mm" or "mid-line" for a sagittal slice,
    from its position (never its instance number or the condition it was chosen for)."""
    if midline is None:
        return "side unknown (no mid-line)"
    offset = sagittal_offset_mm(geometry, index, midline)
    if abs(offset) < MIDLINE_TOLERANCE_MM:
        return f"mid-line ({offset:+.1f} mm)"
    return f"patient {'left' if offset > 0 else 'right'}, {abs(offset):.0f} mm"
