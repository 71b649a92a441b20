"""Cutting one 2.5D view out of a decoded series: slices around a target, a window in mm.

The crop is sampled on a grid of the view's canonical patient axes, projected onto each
slice plane, so scanner orientation, flips and in-plane rotation do not change what the
model sees; each neighbouring slice is cut around the projection of the same 3D point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from spinepipe.crops.views import View
from spinepipe.geometry import StackGeometry


@dataclass(frozen=True)
class CropSpec:
    size: int            # model pixels of the window
    margin: int          # extra pixels cached on each side, for the point jitter
    slices: int          # slices either side of the target the model sees
    extra_slices: int    # further slices cached on each side, for the slice jitter
    mode: str            # "mm" or "ratio"
    window_mm: float
    window_ratio: float
    fill: str            # missing neighbour slices: "zeros" or "nearest"

    @property
    def cached_slices(self) -> int:
        return 2 * (self.slices + self.extra_slices) + 1

    @property
    def cached_size(self) -> int:
        return self.size + 2 * self.margin

    @classmethod
    def for_view(cls, view: View, cfg: dict[str, Any]) -> CropSpec:
        return cls(size=cfg["size"], margin=cfg["margin"], slices=cfg["slices"],
                   extra_slices=cfg["extra_slices"], mode=cfg["mode"],
                   window_mm=float(cfg["window_mm"][view.family][view.series_key]),
                   window_ratio=float(cfg["window_ratio"][view.family][view.series_key]),
                   fill=cfg["fill"])


def _in_plane(axis: NDArray, normal: NDArray, fallback: NDArray) -> NDArray:
    """``axis`` projected onto a slice plane; ``fallback`` when it is (nearly) the normal."""
    projected = axis - (axis @ normal) * normal
    norm = np.linalg.norm(projected)
    return projected / norm if norm > 0.3 else fallback


def window_mm(spec: CropSpec, geometry: StackGeometry, index: int) -> float:
    if spec.mode == "mm":
        return spec.window_mm
    extent = min(geometry.rows[index] * geometry.pixel_spacing[index, 0],
                 geometry.columns[index] * geometry.pixel_spacing[index, 1])
    return spec.window_ratio * float(extent)


def cut_slice(image: NDArray[np.float32], geometry: StackGeometry, index: int, centre: NDArray,
              view: View, step_mm: float, size: int) -> NDArray[np.float32]:
    """A size x size crop of one slice around the 3D point ``centre``, ``step_mm`` per pixel."""
    normal = geometry.normals[index]
    row_dir, col_dir = geometry.row_dir[index], geometry.col_dir[index]
    u = _in_plane(np.asarray(view.u_axis), normal, row_dir)
    v = _in_plane(np.asarray(view.v_axis), normal, col_dir)
    spacing_row, spacing_col = geometry.pixel_spacing[index]
    cx, cy = geometry.to_pixel(index, centre)
    # source pixel = centre + (a - c) * du + (b - c) * dv, for crop pixel (a, b)
    du = np.array([u @ row_dir / spacing_col, u @ col_dir / spacing_row]) * step_mm
    dv = np.array([v @ row_dir / spacing_col, v @ col_dir / spacing_row]) * step_mm
    c = (size - 1) / 2
    matrix = np.array([[du[0], dv[0], cx - c * (du[0] + dv[0])],
                       [du[1], dv[1], cy - c * (du[1] + dv[1])]], dtype=np.float64)
    shrink = max(np.hypot(*du), np.hypot(*dv))
    if shrink > 1.5:  # anti-alias before sampling more coarsely than the source
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=0.4 * shrink)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def crop_view(images: Sequence[NDArray[np.float32] | None], geometry: StackGeometry, target: int,
              x: float, y: float, view: View, spec: CropSpec) -> tuple[NDArray[np.float16], NDArray[np.bool_]]:
    """(cached_slices, cached_size, cached_size) crop and the mask of slices that exist.

    Slices are ordered along the view's slice axis, the target in the middle. A slice that
    could not be decoded (``None`` in ``images``) is treated like one beyond the stack: masked
    out, zeros (or, with ``fill: nearest``, a copy of the nearest slice that exists).
    """
    centre = geometry.to_patient(target, x, y)
    step = window_mm(spec, geometry, target) / spec.size
    direction = 1 if geometry.normals[target] @ np.asarray(view.slice_axis) >= 0 else -1
    half = spec.slices + spec.extra_slices
    out = np.zeros((spec.cached_slices, spec.cached_size, spec.cached_size), dtype=np.float32)
    mask = np.zeros(spec.cached_slices, dtype=bool)
    for k in range(-half, half + 1):
        j = target + direction * k
        if 0 <= j < len(images) and images[j] is not None:
            out[k + half] = cut_slice(images[j], geometry, j, centre, view, step, spec.cached_size)
            mask[k + half] = True
    if spec.fill == "nearest" and mask.any():
        valid = np.flatnonzero(mask)
        for i in np.flatnonzero(~mask):
            out[i] = out[valid[np.argmin(np.abs(valid - i))]]
    return out.astype(np.float16), mask
