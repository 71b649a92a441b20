"""The crops the severity models read at one level, as one image (``crop_montage``): a row per
view, a column per cached slice.

Slices that do not exist or could not be decoded are drawn hatched ("masked",
``masked_pattern``); a view without a crop is a fully hatched row. The montage is assembled
with numpy, so drawing it is a single ``imshow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spinepipe.constants import CONDITION_FAMILY
from spinepipe.crops.views import FAMILY_INPUTS
from spinepipe.qa.types import CropView

# The crop views, grouped by the severity model that reads them: the families that grade a
# condition (not the comparison model "all", whose views these already are), each family's
# views side by side (left before right).
CROP_ROWS: tuple[tuple[str, str], ...] = tuple(
    (family, view)
    for family, sides in FAMILY_INPUTS.items() if family in CONDITION_FAMILY.values()
    for group in zip(*sides.values()) for view in group)
VIEW_SHORT: dict[str, str] = {
    "sag_t2_canal": "spinal: T2 canal", "axial_canal": "spinal: ax canal",
    "sag_t1_left": "foram.: T1 left", "sag_t1_right": "foram.: T1 right",
    "axial_left": "subart.: ax left", "axial_right": "subart.: ax right",
    "sag_t2_left": "subart.: T2 left", "sag_t2_right": "subart.: T2 right",
}
GAP = 2                      # pixels between crop tiles
GAP_VALUE = 1.0              # white separators
MASKED_LOW, MASKED_HIGH = 0.3, 0.55  # the two grey levels of the "masked" hatching


def masked_pattern(height: int, width: int, period: int = 6) -> NDArray[np.float32]:
    """Diagonal grey hatching that stands for a masked slice."""
    y, x = np.mgrid[0:height, 0:width]
    stripes = ((x + y) // max(period // 2, 1)) % 2 == 0
    return np.where(stripes, MASKED_HIGH, MASKED_LOW).astype(np.float32)


def crop_tiles(image: NDArray[Any], mask: Sequence[bool] | NDArray[np.bool_]) -> NDArray[np.float32]:
    """The slices of one crop as displayed: (slices, h, w) float32, each masked slice
    (False in ``mask``: beyond the stack or not decoded) replaced by ``masked_pattern``."""
    tiles = np.asarray(image, dtype=np.float32).copy()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (tiles.shape[0],):
        raise ValueError(f"mask of {mask.shape} for a crop of {tiles.shape[0]} slices")
    tiles[~mask] = masked_pattern(*tiles.shape[1:])
    return tiles


@dataclass(frozen=True)
class CropMontage:
    """The crops of one level as one image: a row per view, a column per slice."""

    level: str
    image: NDArray[np.float32]        # (rows * (h + gap), slices * (w + gap))
    views: tuple[str, ...]            # row labels, "model: view"
    statuses: tuple[str, ...]         # per row: "ok", a crop status, or "missing"
    masked: NDArray[np.bool_]         # (rows, slices): drawn hatched
    tile: tuple[int, int]             # (h, w) of a tile
    offsets: tuple[int, ...]          # slice offset of each column from the target slice
    model_slices: int | None          # slices each side the model reads (None: all)
    margin: int


def crop_montage(level: str, crops: dict[tuple[str, str], CropView]) -> CropMontage:
    """Assemble every view of ``level`` (``CROP_ROWS`` order) into one array; a view
    without a crop is a fully hatched row with status "missing"."""
    present = [crops[(level, view)] for _, view in CROP_ROWS if (level, view) in crops]
    n_slices = max((c.image.shape[0] for c in present), default=1)
    h = max((c.image.shape[1] for c in present), default=32)
    w = max((c.image.shape[2] for c in present), default=32)
    rows = len(CROP_ROWS)
    out = np.full((rows * (h + GAP) - GAP, n_slices * (w + GAP) - GAP), GAP_VALUE,
                  dtype=np.float32)
    masked = np.ones((rows, n_slices), dtype=bool)
    statuses: list[str] = []
    for r, (_, view) in enumerate(CROP_ROWS):
        crop = crops.get((level, view))
        if crop is None:
            image = np.zeros((n_slices, h, w), dtype=np.float32)
            mask = np.zeros(n_slices, dtype=bool)
            statuses.append("missing")
        else:
            image, mask = _fit(crop.image, n_slices, h, w), _fit_mask(crop.mask, n_slices)
            statuses.append(crop.status)
        tiles = crop_tiles(image, mask)
        masked[r] = ~mask
        for s in range(n_slices):
            y0, x0 = r * (h + GAP), s * (w + GAP)
            out[y0:y0 + h, x0:x0 + w] = tiles[s]
    half = n_slices // 2
    model_slices = next((c.slices for c in present if c.slices is not None), None)
    margin = next((c.margin for c in present), 0)
    return CropMontage(level, out, tuple(VIEW_SHORT[view] for _, view in CROP_ROWS),
                       tuple(statuses), masked, (h, w), tuple(range(-half, n_slices - half)),
                       model_slices, margin)


def _fit(image: NDArray[Any], n: int, h: int, w: int) -> NDArray[np.float32]:
    """Pad (zeros) a crop to (n, h, w), centred; crops of one cache all share a shape."""
    image = np.asarray(image, dtype=np.float32)
    out = np.zeros((n, h, w), dtype=np.float32)
    s0, y0, x0 = (n - image.shape[0]) // 2, (h - image.shape[1]) // 2, (w - image.shape[2]) // 2
    out[s0:s0 + image.shape[0], y0:y0 + image.shape[1], x0:x0 + image.shape[2]] = image
    return out


def _fit_mask(mask: Sequence[bool] | NDArray[np.bool_], n: int) -> NDArray[np.bool_]:
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(n, dtype=bool)
    s0 = (n - mask.shape[0]) // 2
    out[s0:s0 + mask.shape[0]] = mask
    return out
