"""Pixel <-> patient geometry of DICOM slices (LPS, mm), vectorised with numpy.

Convention (DICOM PS3.3 C.7.6.2, patient coordinates LPS in mm): pixel (col=x, row=y) of a slice maps to
``IPP + x * PixelSpacing[1] * IOP[0:3] + y * PixelSpacing[0] * IOP[3:6]``. The conventions
every stage shares (axes, pixel centres, slice order, patient vs image left and right, level
order, how axial slices are matched to levels): docs/contracts.md, section 4 "Geometry
conventions".
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


LEFT = np.array([1.0, 0.0, 0.0])  # LPS: +x is the patient's left


@dataclass(frozen=True)
class StackGeometry:
    """All slices of one series, ordered by position along the series normal.

    Each slice keeps its own plane, so per-level tilted axial blocks are handled exactly.
    """

    instance_numbers: NDArray[np.int64]
    ipp: NDArray[np.float64]            # (n, 3)
    row_dir: NDArray[np.float64]        # (n, 3)
    col_dir: NDArray[np.float64]        # (n, 3)
    pixel_spacing: NDArray[np.float64]  # (n, 2)
    rows: NDArray[np.int64]
    columns: NDArray[np.int64]

    @classmethod
    def from_arrays(cls, instance_numbers, ipp, iop, pixel_spacing, rows, columns) -> StackGeometry:
        iop = np.asarray(iop, dtype=np.float64)
        ipp = np.asarray(ipp, dtype=np.float64)
        normals = slice_normal(iop)
        mean_normal = (normals * np.sign(normals @ normals[0])[:, None]).mean(axis=0)
        order = np.argsort(ipp @ mean_normal, kind="stable")
        return cls(np.asarray(instance_numbers, dtype=np.int64)[order], ipp[order],
                   iop[order, :3], iop[order, 3:],
                   np.asarray(pixel_spacing, dtype=np.float64)[order],
                   np.asarray(rows, dtype=np.int64)[order],
                   np.asarray(columns, dtype=np.int64)[order])

    @classmethod
    def from_instances(cls, frame) -> StackGeometry:
        """From instance rows (polars) of one series with status ok."""
        return cls.from_arrays(
            frame["instance_number"].to_numpy(),
            frame.select("ipp_x", "ipp_y", "ipp_z").to_numpy(),
            frame.select([f"iop_{i}" for i in range(6)]).to_numpy(),
            frame.select("pixel_spacing_row", "pixel_spacing_col").to_numpy(),
            frame["rows"].to_numpy(), frame["columns"].to_numpy())

    def __len__(self) -> int:
        return len(self.instance_numbers)

    @property
    def normals(self) -> NDArray[np.float64]:
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    @property
    def spacing(self) -> float:
        """Median distance between neighbouring slices of the same orientation (mm)."""
        if len(self) < 2:
            return 0.0
        steps = np.einsum("ij,ij->i", np.diff(self.ipp, axis=0), self.normals[1:])
        return float(np.median(np.abs(steps)))

    def plane(self, index: int) -> SlicePlane:
        return SlicePlane(self.ipp[index], self.row_dir[index], self.col_dir[index],
                          self.pixel_spacing[index])

    def index_of(self, instance_number: int) -> int:
        matches = np.flatnonzero(self.instance_numbers == instance_number)
        if matches.size == 0:
            raise KeyError(f"instance {instance_number} not in this series")
        return int(matches[0])

    def distances(self, point: ArrayLike) -> NDArray[np.float64]:
        """Signed distance (mm) from a 3D point to every slice plane, in position order."""
        return np.einsum("ij,ij->i", np.asarray(point, dtype=np.float64) - self.ipp, self.normals)

    def nearest(self, point: ArrayLike) -> tuple[int, float]:
        d = self.distances(point)
        index = int(np.argmin(np.abs(d)))
        return index, float(d[index])

    def to_patient(self, index: int, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        return self.plane(index).to_patient(x, y)

    def to_pixel(self, index: int, point: ArrayLike) -> tuple[float, float]:
        x, y, _ = self.plane(index).to_pixel(point)
        return float(x), float(y)

    def left_offsets(self, reference: ArrayLike) -> NDArray[np.float64]:
        """Signed distance (mm) of each slice from ``reference`` toward the patient's left.

        Meaningful for sagittal stacks; follows positions, never image or instance order.
        """
        d = -self.distances(reference)  # slice minus reference, along each slice normal
        return d * np.sign(self.normals @ LEFT)

    @property
    def mirrored(self) -> bool:
        """Columns run towards the patient's right: the image is the mirror of the
        radiological view (patient left on the image's right). Axial stacks of a feet-first
        or flipped acquisition are; a model that reads left and right off the image must see
        them flipped back."""
        along_left = float(np.median(self.row_dir @ LEFT))
        # only for rows that run across the patient (axial, coronal); a sagittal row runs
        # front to back and has no left-right sense
        return along_left < -0.5

    def in_image(self, index: int, x: float, y: float) -> bool:
        return bool(0 <= x <= self.columns[index] - 1 and 0 <= y <= self.rows[index] - 1)
