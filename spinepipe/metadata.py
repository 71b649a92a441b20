"""Series metadata: one row per DICOM file (header only) and one row per series.

Headers are read with pixel data deferred, so the parse never decodes an image, yet still
sees whether pixel data is present and whether the file is long enough to hold it. Every
file gets a row: unreadable, truncated or pixel-less ones carry a status and a reason.
Results are cached per study (keyed by the study's file names, sizes and mtimes), so a
re-run after adding a study parses only the new study's files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydicom
from tqdm import tqdm

from spinepipe.constants import AXIAL_T2, SERIES_DESCRIPTIONS
from spinepipe.geometry import slice_normal

log = logging.getLogger(__name__)

PARSER_VERSION = 1
PIXEL_DATA = 0x7FE00010

INSTANCE_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.Int64, "series_id": pl.Int64, "instance_number": pl.Int64,
    "path": pl.String, "file_size": pl.Int64,
    "ipp_x": pl.Float64, "ipp_y": pl.Float64, "ipp_z": pl.Float64,
    "iop_0": pl.Float64, "iop_1": pl.Float64, "iop_2": pl.Float64,
    "iop_3": pl.Float64, "iop_4": pl.Float64, "iop_5": pl.Float64,
    "pixel_spacing_row": pl.Float64, "pixel_spacing_col": pl.Float64,
    "slice_thickness": pl.Float64, "spacing_between_slices": pl.Float64,
    "slice_location": pl.Float64, "patient_position": pl.String,
    "rows": pl.Int64, "columns": pl.Int64, "bits_stored": pl.Int64,
    "dicom_series_description": pl.String, "status": pl.String, "error": pl.String,
}
GEOMETRY_COLUMNS = ["ipp_x", "ipp_y", "ipp_z", "iop_0", "iop_1", "iop_2", "iop_3", "iop_4",
                    "iop_5", "pixel_spacing_row", "pixel_spacing_col"]


def _float(ds: pydicom.Dataset, keyword: str, index: int | None = None) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value[index] if index is not None else value)
    except (TypeError, ValueError, IndexError):
        return None


def read_instance_header(path: Path, study_id: int, series_id: int) -> dict[str, Any]:
    """Header of one file; never raises: problems become ``status`` and ``error``."""
    row: dict[str, Any] = {key: None for key in INSTANCE_SCHEMA}
    row.update(study_id=study_id, series_id=series_id, path=str(path), status="ok")
    try:
        size = path.stat().st_size
        row["file_size"] = size
        ds = pydicom.dcmread(path, defer_size=256)
    except Exception as error:  # pydicom raises many kinds for broken files
        row.update(status="unreadable", error=f"{type(error).__name__}: {error}"[:300])
        return row
    try:
        row["instance_number"] = int(ds.InstanceNumber) if "InstanceNumber" in ds else None
    except (TypeError, ValueError):
        row["instance_number"] = None
    if row["instance_number"] is None and path.stem.isdigit():
        row["instance_number"] = int(path.stem)
    for axis, name in enumerate("xyz"):
        row[f"ipp_{name}"] = _float(ds, "ImagePositionPatient", axis)
    for i in range(6):
        row[f"iop_{i}"] = _float(ds, "ImageOrientationPatient", i)
    row["pixel_spacing_row"] = _float(ds, "PixelSpacing", 0)
    row["pixel_spacing_col"] = _float(ds, "PixelSpacing", 1)
    row["slice_thickness"] = _float(ds, "SliceThickness")
    row["spacing_between_slices"] = _float(ds, "SpacingBetweenSlices")
    row["slice_location"] = _float(ds, "SliceLocation")
    row["patient_position"] = str(ds.get("PatientPosition", "")) or None
    row["dicom_series_description"] = str(ds.get("SeriesDescription", "")) or None
    for key, keyword in (("rows", "Rows"), ("columns", "Columns"), ("bits_stored", "BitsStored")):
        value = ds.get(keyword)
        row[key] = int(value) if value is not None else None

    if PIXEL_DATA not in ds:
        row.update(status="no_pixels", error="no PixelData element")
    else:
        element = ds.get_item(PIXEL_DATA, keep_deferred=True)  # raw: offset and length, no read
        length = getattr(element, "length", None)
        tell = getattr(element, "value_tell", None)
        expected = ((row["rows"] or 0) * (row["columns"] or 0) * int(ds.get("BitsAllocated", 16)) // 8)
        undefined = length in (None, 0xFFFFFFFF)  # encapsulated (compressed) pixel data
        if tell is not None and not undefined and tell + length > size:
            row.update(status="truncated", error=f"PixelData needs {length} bytes from offset "
                                                  f"{tell}, file has {size}")
        elif not undefined and length is not None and length < expected:
            row.update(status="truncated", error=f"PixelData holds {length} bytes, "
                                                  f"{row['rows']}x{row['columns']} needs {expected}")
    if row["status"] == "ok" and any(row[c] is None for c in GEOMETRY_COLUMNS):
        missing = [c for c in GEOMETRY_COLUMNS if row[c] is None]
        row.update(status="no_geometry", error=f"missing or invalid {', '.join(missing)}")
    return row


def _study_fingerprint(files: list[Path]) -> str:
    stats = [(f"{p.parent.name}/{p.name}", p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([PARSER_VERSION, stats])


def parse_study(study_dir: Path, series_ids: Iterable[int], cache_dir: Path | None) -> pl.DataFrame:
    """Instance rows of one study (listed series only), reusing the cache when unchanged."""
    study_id = int(study_dir.name)
    series_ids = sorted(series_ids)
    files = sorted(p for s in series_ids for p in (study_dir / str(s)).glob("*.dcm"))
    fingerprint = _study_fingerprint(files)
    cache = cache_dir / f"{study_id}.parquet" if cache_dir else None
    if cache is not None and cache.is_file():
        cached = pl.read_parquet(cache)
        if pl.read_parquet_metadata(cache).get("fingerprint") == fingerprint:
            return cached
    rows = [read_instance_header(p, study_id, int(p.parent.name)) for p in files]
    frame = pl.DataFrame(rows, schema=INSTANCE_SCHEMA)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(cache, metadata={"fingerprint": fingerprint})
    return frame


def parse_instances(image_root: Path, series_table: pl.DataFrame,
                    cache_dir: Path | None = None) -> pl.DataFrame:
    """Instance rows for every series listed in ``series_table`` (study_id, series_id)."""
    frames = []
    grouped = series_table.group_by("study_id", maintain_order=True).agg("series_id")
    for study_id, series_ids in tqdm(grouped.iter_rows(), total=grouped.height,
                                     desc="headers", unit="study", disable=None):
        frames.append(parse_study(image_root / str(study_id), series_ids, cache_dir))
    return pl.concat(frames) if frames else pl.DataFrame(schema=INSTANCE_SCHEMA)


SERIES_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
    "known_description": pl.Boolean, "plane": pl.String, "n_files": pl.Int64, "n_ok": pl.Int64,
    "n_bad": pl.Int64, "normal_x": pl.Float64, "normal_y": pl.Float64, "normal_z": pl.Float64,
    "n_orientations": pl.Int64, "mixed_orientation": pl.Boolean,
    "instances_by_position": pl.List(pl.Int64), "positions_mm": pl.List(pl.Float64),
    "spacing_mm": pl.Float64, "irregular_spacing": pl.Boolean, "position_gaps": pl.Int64,
    "duplicate_positions": pl.Boolean, "reversed_order": pl.Boolean,
    "rows": pl.Int64, "columns": pl.Int64, "pixel_spacing_mm": pl.Float64,
    "slice_thickness_mm": pl.Float64, "patient_position": pl.String,
    "missing_folder": pl.Boolean, "geometry_ok": pl.Boolean, "geometry_error": pl.String,
}
ORIENTATION_TOLERANCE_DEG = 1.0


def _orientation_clusters(normals: np.ndarray) -> np.ndarray:
    """Cluster label per slice: slices whose normals agree within the tolerance."""
    labels = np.full(len(normals), -1)
    centres: list[np.ndarray] = []
    cos_tol = np.cos(np.deg2rad(ORIENTATION_TOLERANCE_DEG))
    for i, n in enumerate(normals):
        for k, c in enumerate(centres):
            if abs(n @ c) >= cos_tol:
                labels[i] = k
                break
        else:
            centres.append(n)
            labels[i] = len(centres) - 1
    return labels


def _plane_name(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def summarize_one_series(study_id: int, series_id: int, description: str | None,
                         rows: pl.DataFrame) -> dict[str, Any]:
    """One series' row of series.parquet from its instance rows."""
    out: dict[str, Any] = {key: None for key in SERIES_SCHEMA}
    out.update(study_id=study_id, series_id=series_id, series_description=description,
               known_description=description in SERIES_DESCRIPTIONS, n_files=rows.height,
               missing_folder=rows.height == 0, geometry_ok=False)
    ok = rows.filter(pl.col("status") == "ok")
    out["n_ok"], out["n_bad"] = ok.height, rows.height - ok.height
    if ok.height == 0:
        out["geometry_error"] = "no readable slice" if rows.height else "no files"
        return out
    iop = ok.select([f"iop_{i}" for i in range(6)]).to_numpy()
    normals = slice_normal(iop)
    normals *= np.sign(normals @ normals[0])[:, None]  # one orientation sign for the series
    mean = normals.mean(axis=0)
    mean /= np.linalg.norm(mean)
    clusters = _orientation_clusters(normals)
    ipp = ok.select("ipp_x", "ipp_y", "ipp_z").to_numpy()
    positions = ipp @ mean
    order = np.argsort(positions, kind="stable")
    sorted_positions = positions[order]
    instances = ok["instance_number"].to_numpy()[order]
    steps = np.diff(sorted_positions)
    same_cluster = clusters[order][1:] == clusters[order][:-1]
    within = steps[same_cluster] if same_cluster.any() else steps
    spacing = float(np.median(within)) if within.size else None
    out.update(
        plane=_plane_name(mean), normal_x=float(mean[0]), normal_y=float(mean[1]),
        normal_z=float(mean[2]), n_orientations=int(clusters.max() + 1),
        mixed_orientation=bool(clusters.max() > 0),
        instances_by_position=[int(i) for i in instances],
        positions_mm=[float(p) for p in sorted_positions], spacing_mm=spacing,
        rows=int(ok["rows"].mode().sort()[0]), columns=int(ok["columns"].mode().sort()[0]),
        pixel_spacing_mm=float(ok["pixel_spacing_row"].median()),
        slice_thickness_mm=ok["slice_thickness"].median(),
        patient_position=ok["patient_position"].mode().sort()[0],
    )
    duplicates = bool(np.any(np.abs(steps) < 1e-3)) if steps.size else False
    out["duplicate_positions"] = duplicates
    if spacing and within.size:
        out["irregular_spacing"] = bool(np.any(np.abs(within - spacing) > 0.25 * spacing))
        out["position_gaps"] = int(np.sum(within > 1.5 * spacing))
    else:
        out["irregular_spacing"], out["position_gaps"] = False, 0
    out["reversed_order"] = bool(len(instances) > 1 and np.corrcoef(
        np.arange(len(instances)), instances)[0, 1] < 0)
    problems = []
    if duplicates:
        problems.append("two slices at the same position")
    if ok["pixel_spacing_row"].n_unique() > 1 and ok["pixel_spacing_row"].std() > 1e-3:
        problems.append("pixel spacing varies across slices")
    if not out["known_description"]:
        problems.append(f"unknown series description {description!r}")
    out["geometry_error"] = "; ".join(problems) or None
    out["geometry_ok"] = not problems
    return out


def summarize_series(instances: pl.DataFrame, series_table: pl.DataFrame) -> pl.DataFrame:
    """series.parquet: one row per series of ``series_table``, folder present or not."""
    by_series = {key: frame for key, frame in instances.group_by("study_id", "series_id")}
    rows = []
    for study_id, series_id, description in series_table.select(
            "study_id", "series_id", "series_description").iter_rows():
        frame = by_series.get((study_id, series_id), instances.clear())
        rows.append(summarize_one_series(study_id, series_id, description, frame))
    return pl.DataFrame(rows, schema=SERIES_SCHEMA)


def axial_series(series: pl.DataFrame) -> pl.DataFrame:
    return series.filter((pl.col("series_description") == AXIAL_T2) & pl.col("geometry_ok"))


def shard_of(study_id: int, shards: int) -> int:
    """Header-parse shard of a study: fixed by its id, so studies never move between shards."""
    return study_id % shards


def parse_shard(data_dir: Path, split: str, series_table: pl.DataFrame, shard: int,
                shards: int, cache_dir: Path | None) -> pl.DataFrame:
    mine = series_table.filter((pl.col("study_id") % shards) == shard)
    return parse_instances(data_dir / f"{split}_images", mine, cache_dir).with_columns(
        split=pl.lit(split))
