"""Reading DICOM series: slices ordered by position along the normal, never by InstanceNumber."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from spinepipe.geometry import SlicePlane, positions_along, slice_normal
from spinepipe.pixels import SliceDecodeError, decode_slice

log = logging.getLogger(__name__)


class SeriesReadError(RuntimeError):
    """A series folder that cannot be turned into a volume; the message names the file."""


@dataclass
class SeriesVolume:
    """A stack of slices sorted by position along the slice normal."""

    pixels: list[NDArray[np.float32]]
    planes: list[SlicePlane]
    instance_numbers: list[int]
    positions: NDArray[np.float64]  # mm along ``normal``, ascending
    lost_files: list[str] = field(default_factory=list)  # "file: reason", pixels not decodable

    @property
    def normal(self) -> NDArray[np.float64]:
        return self.planes[0].normal

    def nearest_slice(self, point: NDArray[np.float64]) -> tuple[int, float]:
        """Index of the slice nearest ``point`` and the signed distance to it (mm)."""
        distance = point @ self.normal - self.positions
        index = int(np.argmin(np.abs(distance)))
        return index, float(distance[index])


def read_series(folder: Path) -> SeriesVolume:
    """Read every ``*.dcm`` of a series folder with its pixels (``spinepipe.pixels``).

    A file whose header cannot be read raises; a file whose pixels cannot be decoded is left
    out of the volume (geometry and pixels alike, so positions stay consistent) and named in
    ``lost_files``; a series none of whose pixels decode raises.
    """
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise SeriesReadError(f"{folder}: no DICOM files")
    records = []
    lost: list[str] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            plane = SlicePlane.from_dicom(ds.ImagePositionPatient, ds.ImageOrientationPatient,
                                          ds.PixelSpacing)
            number = int(ds.InstanceNumber)
        except Exception as error:  # pydicom raises many kinds for broken files
            raise SeriesReadError(f"{path}: unreadable DICOM ({error})") from error
        try:
            records.append((plane, number, decode_slice(path)))
        except SliceDecodeError as error:
            log.warning("%s: slice left out: %s", folder, error)
            lost.append(f"{path.name}: {error.reason}")
    if not records:
        raise SeriesReadError(f"{folder}: no slice could be decoded ({'; '.join(lost)[:300]})")
    normal = slice_normal(np.concatenate([records[0][0].row_dir, records[0][0].col_dir]))
    positions = positions_along([r[0].ipp for r in records], normal)
    order = np.argsort(positions)
    return SeriesVolume(pixels=[records[i][2] for i in order], planes=[records[i][0] for i in order],
                        instance_numbers=[records[i][1] for i in order], positions=positions[order],
                        lost_files=lost)
