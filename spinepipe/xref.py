"""From sagittal level coordinates to 3D points, to axial slices and sagittal slice choices.

Level points: the spinal canal point (Sagittal T2) of each level mapped into patient space;
its lateral position is refined with the mid-point of the two foramen points (Sagittal T1)
when both exist, because a point on a sagittal slice only knows its lateral position to
within half a slice spacing, and the foramina sit symmetrically about the mid-line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter, map_coordinates

from spinepipe.constants import AXIAL_T2, CONDITION_NAMES
from spinepipe.geometry import LEFT, StackGeometry

log = logging.getLogger(__name__)

SPINAL = CONDITION_NAMES["spinal_canal_stenosis"]
LEFT_FORAMEN = CONDITION_NAMES["left_neural_foraminal_narrowing"]
RIGHT_FORAMEN = CONDITION_NAMES["right_neural_foraminal_narrowing"]

LEVEL_POINT_SCHEMA = {"study_id": pl.Int64, "level": pl.String, "x_mm": pl.Float64,
                      "y_mm": pl.Float64, "z_mm": pl.Float64, "source": pl.String}
XREF_SCHEMA = {"study_id": pl.Int64, "level": pl.String, "series_id": pl.Int64,
               "instance_number": pl.Int64, "slice_index": pl.Int64, "distance_mm": pl.Float64,
               "x": pl.Float64, "y": pl.Float64, "in_image": pl.Boolean,
               "slices_within_spacing": pl.Int64, "lateral_shift_mm": pl.Float64,
               "source": pl.String}


def stack_geometries(instances: pl.DataFrame, series: pl.DataFrame) -> dict[int, StackGeometry]:
    """Geometry of every series whose geometry resolved, keyed by series_id."""
    ok_ids = series.filter(pl.col("geometry_ok"))["series_id"].to_list()
    ok = instances.filter((pl.col("status") == "ok") & pl.col("series_id").is_in(ok_ids))
    return {sid: StackGeometry.from_instances(frame)
            for (sid,), frame in ok.group_by("series_id")}


def annotation_points(coordinates: pl.DataFrame,
                      geometries: dict[int, StackGeometry]) -> pl.DataFrame:
    """Each annotated (study, condition, level) point mapped to patient space."""
    rows = []
    for r in coordinates.iter_rows(named=True):
        geometry = geometries.get(r["series_id"])
        if geometry is None:
            continue
        try:
            index = geometry.index_of(r["instance_number"])
        except KeyError:
            log.warning("study %s series %s: annotated instance %s has no readable slice",
                        r["study_id"], r["series_id"], r["instance_number"])
            continue
        p = geometry.to_patient(index, r["x"], r["y"])
        rows.append({"study_id": r["study_id"], "condition": r["condition"], "level": r["level"],
                     "series_id": r["series_id"], "px": p[0], "py": p[1], "pz": p[2]})
    return pl.DataFrame(rows, schema={"study_id": pl.Int64, "condition": pl.String,
                                      "level": pl.String, "series_id": pl.Int64,
                                      "px": pl.Float64, "py": pl.Float64, "pz": pl.Float64})


def level_points(points: pl.DataFrame, geometries: dict[int, StackGeometry]) -> pl.DataFrame:
    """One 3D point per (study, level): the canal centre, laterally refined by the foramina."""
    wide = {}
    for r in points.iter_rows(named=True):
        wide.setdefault((r["study_id"], r["level"]), {})[r["condition"]] = (
            np.array([r["px"], r["py"], r["pz"]]), r["series_id"])
    rows = []
    for (study_id, level), found in wide.items():
        canal = found.get(SPINAL)
        left, right = found.get(LEFT_FORAMEN), found.get(RIGHT_FORAMEN)
        if canal is not None:
            point, source = canal[0].copy(), "spinal"
            if left is not None and right is not None:
                # Lateral position: inverse-variance mean of the canal slice's position
                # (uniform error over one T2 spacing) and the foramina's mid-line (mean of two
                # independent errors over one T1 spacing).
                normal = geometries[canal[1]].normals[0]
                mid = (left[0] + right[0]) / 2.0
                var_canal = geometries[canal[1]].spacing ** 2 / 12.0
                var_mid = geometries[left[1]].spacing ** 2 / 24.0
                # a single-slice series has no spacing: then trust whichever has one
                total = var_canal + var_mid
                weight = var_canal / total if total > 0 else 0.5
                point += weight * ((mid - point) @ normal) * normal
                source = "spinal+foraminal_midline"
        elif left is not None and right is not None:
            point, source = (left[0] + right[0]) / 2.0, "foraminal_midpoint"
        else:
            continue
        rows.append({"study_id": study_id, "level": level, "x_mm": point[0], "y_mm": point[1],
                     "z_mm": point[2], "source": source})
    return pl.DataFrame(rows, schema=LEVEL_POINT_SCHEMA).sort("study_id", "level")


# Window of the symmetry search around the level point on the axial slice (mm): lateral
# half-width and AP reach. Kept close to the canal: a wider window reaches structures whose
# mirror axis tilts with the patient's rotation, which biases the shift.
SYMMETRY_HALF_WIDTH_MM = 14.0
SYMMETRY_AP_MM = (-10.0, 10.0)
SYMMETRY_MAX_SHIFT_MM = 3.0
HIGHPASS_SIGMA_PX = 6.0  # removes the coil bias field, which is not symmetric


def symmetry_shift(image: NDArray, geometry: StackGeometry, index: int,
                   point: NDArray[np.float64]) -> float:
    """Lateral shift (mm, toward patient left) that makes the axial image around ``point``
    most left-right symmetric: the mid-line of canal, vertebral body and posterior elements.

    A sagittal annotation fixes the lateral position only to within half a slice spacing;
    the axial image itself pins the mid-line to a fraction of a pixel.
    """
    image = image - gaussian_filter(image, HIGHPASS_SIGMA_PX)
    plane = geometry.plane(index)
    normal = plane.normal
    lateral = LEFT - (LEFT @ normal) * normal
    lateral /= np.linalg.norm(lateral)
    anterior_posterior = np.cross(normal, lateral)
    anterior_posterior *= np.sign(anterior_posterior[1]) or 1.0  # +y: posterior
    u = np.arange(0.5, SYMMETRY_HALF_WIDTH_MM, 0.5)
    v = np.arange(SYMMETRY_AP_MM[0], SYMMETRY_AP_MM[1], 1.0)

    shifts = np.arange(-SYMMETRY_MAX_SHIFT_MM, SYMMETRY_MAX_SHIFT_MM + 1e-9, 0.1)

    def sample(sign: float) -> NDArray:
        """(shift, v, u): the image at distance u toward ``sign``, every shift at once."""
        pts = (point + shifts[:, None, None, None] * lateral + sign * u[None, None, :, None] * lateral
               + v[None, :, None, None] * anterior_posterior)
        x, y, _ = plane.to_pixel(pts)
        return map_coordinates(image, [y, x], order=1, mode="constant", cval=0.0)

    costs = np.mean((sample(1.0) - sample(-1.0)) ** 2, axis=(1, 2))
    best = int(np.argmin(costs))
    if best in (0, len(shifts) - 1):  # at the edge of the search: no clear mid-line
        return 0.0
    return float(shifts[best])


def axial_cross_reference(points: pl.DataFrame, series: pl.DataFrame,
                          geometries: dict[int, StackGeometry],
                          read_slice: Callable[[int, int], NDArray] | None = None) -> pl.DataFrame:
    """For every level point and every axial series of its study: nearest slice and pixel.

    With ``read_slice(series_id, instance_number) -> pixels`` the lateral position is
    refined on the chosen axial slice by its left-right symmetry (see ``symmetry_shift``).
    """
    axial = series.filter((pl.col("series_description") == AXIAL_T2) & pl.col("geometry_ok"))
    by_study = {sid: frame["series_id"].to_list() for (sid,), frame in axial.group_by("study_id")}
    rows = []
    for r in points.iter_rows(named=True):
        point = np.array([r["x_mm"], r["y_mm"], r["z_mm"]])
        for series_id in by_study.get(r["study_id"], []):
            geometry = geometries[series_id]
            distances = geometry.distances(point)
            index = int(np.argmin(np.abs(distances)))
            refined, shift = point, 0.0
            if read_slice is not None:
                try:
                    image = read_slice(series_id, int(geometry.instance_numbers[index]))
                    shift = symmetry_shift(image, geometry, index, point)
                except Exception as error:  # an unreadable slice keeps the geometric point
                    log.warning("series %s: no symmetry refinement (%s)", series_id, error)
                normal = geometry.normals[index]
                lateral = LEFT - (LEFT @ normal) * normal
                refined = point + shift * lateral / np.linalg.norm(lateral)
            x, y = geometry.to_pixel(index, refined)
            spacing = np.median(np.abs(np.diff(np.sort(distances)))) if len(geometry) > 1 else 0.0
            rows.append({"study_id": r["study_id"], "level": r["level"], "series_id": series_id,
                         "instance_number": int(geometry.instance_numbers[index]),
                         "slice_index": index, "distance_mm": float(distances[index]),
                         "x": x, "y": y, "in_image": geometry.in_image(index, x, y),
                         "slices_within_spacing": int(np.sum(np.abs(distances) <= spacing)),
                         "lateral_shift_mm": shift, "source": r["source"]})
    return pl.DataFrame(rows, schema=XREF_SCHEMA)


def select_sagittal_slices(geometry: StackGeometry, canal_point: np.ndarray,
                           foramen_offset_mm: float, n_mid: int = 1) -> dict[str, Any]:
    """Instance numbers of the mid slice(s) through the canal and of the slices through the
    left and right foramina (nearest to +/- ``foramen_offset_mm`` from the canal)."""
    offsets = geometry.left_offsets(canal_point)
    mid = np.argsort(np.abs(offsets), kind="stable")[:n_mid]
    left = int(np.argmin(np.abs(offsets - foramen_offset_mm)))
    right = int(np.argmin(np.abs(offsets + foramen_offset_mm)))
    return {"mid": [int(geometry.instance_numbers[i]) for i in sorted(mid)],
            "left": int(geometry.instance_numbers[left]),
            "right": int(geometry.instance_numbers[right]),
            "left_offset_mm": float(offsets[left]), "right_offset_mm": float(offsets[right])}


def sagittal_sides(geometry: StackGeometry, midline_point: np.ndarray,
                   tolerance_mm: float = 1.0) -> list[str]:
    """'left', 'right' or 'mid' for every slice (position order), from positions alone."""
    offsets = geometry.left_offsets(midline_point)
    return ["mid" if abs(o) <= tolerance_mm else ("left" if o > 0 else "right") for o in offsets]


def slice_reader(instances: pl.DataFrame) -> Callable[[int, int], NDArray]:
    """``read_slice(series_id, instance_number)``: pixels of one file, from instances.parquet
    (any transfer syntax; raises ``SliceDecodeError`` naming the file when it cannot decode)."""
    from spinepipe.pixels import decode_slice

    paths = {(r[0], r[1]): r[2] for r in instances.filter(pl.col("status") == "ok")
             .select("series_id", "instance_number", "path").iter_rows()}

    def read_slice(series_id: int, instance_number: int) -> NDArray:
        return decode_slice(paths[(series_id, instance_number)])

    return read_slice
