"""Pixel <-> patient geometry of DICOM slices (LPS, mm), vectorised with numpy.

Convention (DICOM, shared/DESIGN.md): pixel (col=x, row=y) of a slice maps to
``IPP + x * PixelSpacing[1] * IOP[0:3] + y * PixelSpacing[0] * IOP[3:6]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def slice_normal(iop: ArrayLike) -> NDArray[np.float64]:
    """Unit normal of a slice: row direction x column direction."""
    iop = np.asarray(iop, dtype=np.float64)
    normal = np.cross(iop[..., 0:3], iop[..., 3:6])
    return normal / np.linalg.norm(normal, axis=-1, keepdims=True)


@dataclass(frozen=True)
class SlicePlane:
    """Geometry of one 2D slice."""

    ipp: NDArray[np.float64]            # (3,) position of the centre of pixel (0, 0)
    row_dir: NDArray[np.float64]        # (3,) direction of increasing column index x
    col_dir: NDArray[np.float64]        # (3,) direction of increasing row index y
    pixel_spacing: NDArray[np.float64]  # (2,) [row spacing, column spacing] in mm

    @classmethod
    def from_dicom(cls, ipp: ArrayLike, iop: ArrayLike, pixel_spacing: ArrayLike) -> SlicePlane:
        iop = np.asarray(iop, dtype=np.float64)
        return cls(np.asarray(ipp, dtype=np.float64), iop[:3], iop[3:],
                   np.asarray(pixel_spacing, dtype=np.float64))

    @property
    def normal(self) -> NDArray[np.float64]:
        return slice_normal(np.concatenate([self.row_dir, self.col_dir]))

    def to_patient(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Pixel coordinates (x = column, y = row), any shape -> patient points (..., 3)."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (self.ipp + x * self.pixel_spacing[1] * self.row_dir
                + y * self.pixel_spacing[0] * self.col_dir)

    def to_pixel(self, points: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                                    NDArray[np.float64]]:
        """Patient points (..., 3) -> (x, y, signed distance in mm from the plane)."""
        d = np.asarray(points, dtype=np.float64) - self.ipp
        x = d @ self.row_dir / self.pixel_spacing[1]
        y = d @ self.col_dir / self.pixel_spacing[0]
        return x, y, d @ self.normal

    def grid(self, rows: int, columns: int) -> NDArray[np.float64]:
        """Patient coordinates of every pixel centre, shape (rows, columns, 3)."""
        y, x = np.mgrid[0:rows, 0:columns]
        return self.to_patient(x, y)


def positions_along(ipps: ArrayLike, normal: ArrayLike) -> NDArray[np.float64]:
    """Position of each slice along the normal (mm): the order to sort a stack by."""
    return np.asarray(ipps, dtype=np.float64) @ np.asarray(normal, dtype=np.float64)
