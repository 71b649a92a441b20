"""Series metadata: one row per DICOM file (header only) and one row per series.

Headers are read with pixel data deferred, so the parse never decodes an image, yet still
sees whether pixel data is present and whether the file is long enough to hold it. Every
file gets a row: unreadable, truncated or pixel-less ones carry a status and a reason.
Every file's geometry is validated before anything uses it (finite position, two unit-length
orthogonal direction cosines, finite positive pixel spacing): a file that fails gets status
``bad_geometry`` and the reason. Slices are identified by file and position, never by
InstanceNumber alone: ``instance_number`` is a key unique within its series (the header's
InstanceNumber where it is present and unique, else the file name's number, else a new
number), the header value stays in ``dicom_instance_number`` and ``note`` says what was done.

Results are cached per study under a disposable cache folder (``results/metadata/cache/``):
each entry is keyed by the study's file names, sizes and mtimes and by a hash of the code that
parses them, written atomically (temporary file, then rename) and validated on read; a stale,
foreign or corrupt entry is parsed again and logged, never trusted or fatal. Deleting the
folder only costs a re-parse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydicom
from tqdm import tqdm

from spinepipe.code_inputs import code_digest
from spinepipe.constants import SERIES_DESCRIPTIONS
from spinepipe.geometry import slice_normal
from spinepipe.parquet_cache import read_cached, write_cached

log = logging.getLogger(__name__)

PIXEL_DATA = 0x7FE00010
DEFLATED = "1.2.840.10008.1.2.1.99"
# Direction cosines: each within this of unit length, and their dot product within this of 0.
DIRECTION_TOLERANCE = 1e-2

INSTANCE_SCHEMA: dict[str, pl.DataType] = {
    "study_id": pl.Int64, "series_id": pl.Int64, "instance_number": pl.Int64,
    "dicom_instance_number": pl.Int64, "path": pl.String, "file_size": pl.Int64,
    "ipp_x": pl.Float64, "ipp_y": pl.Float64, "ipp_z": pl.Float64,
    "iop_0": pl.Float64, "iop_1": pl.Float64, "iop_2": pl.Float64,
    "iop_3": pl.Float64, "iop_4": pl.Float64, "iop_5": pl.Float64,
    "pixel_spacing_row": pl.Float64, "pixel_spacing_col": pl.Float64,
    "slice_thickness": pl.Float64, "spacing_between_slices": pl.Float64,
    "slice_location": pl.Float64, "patient_position": pl.String,
    "rows": pl.Int64, "columns": pl.Int64, "bits_stored": pl.Int64,
    "dicom_series_description": pl.String, "transfer_syntax": pl.String,
    "status": pl.String, "error": pl.String, "note": pl.String,
}
GEOMETRY_COLUMNS = ["ipp_x", "ipp_y", "ipp_z", "iop_0", "iop_1", "iop_2", "iop_3", "iop_4",
                    "iop_5", "pixel_spacing_row", "pixel_spacing_col"]


def _float(ds: pydicom.Dataset, keyword: str, index: int | None = None) -> float | None:
    """A numeric header value, None when absent or not a number (NaN stays NaN: it is
    caught by the geometry validation, which names it)."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return float(value[index] if index is not None else value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def geometry_problems(ipp: list[float | None], iop: list[float | None],
                      spacing: list[float | None]) -> list[str]:
    """What is wrong with one slice's geometry (empty when it can be trusted).

    IOP must hold two unit-length (within DIRECTION_TOLERANCE), orthogonal direction cosines;
    IPP must be finite; PixelSpacing finite and positive.
    """
    problems = []
    if not all(v is not None and math.isfinite(v) for v in ipp):
        problems.append(f"ImagePositionPatient not finite {ipp}")
    if not all(v is not None and math.isfinite(v) for v in iop):
        problems.append(f"ImageOrientationPatient not finite {iop}")
    else:
        row, col = np.array(iop[:3]), np.array(iop[3:])
        norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
        if any(abs(n - 1.0) > DIRECTION_TOLERANCE for n in norms):
            problems.append("ImageOrientationPatient direction cosines of length "
                            f"{norms[0]:.3g}, {norms[1]:.3g}, not 1")
        elif abs(float(row @ col)) > DIRECTION_TOLERANCE:
            problems.append(f"ImageOrientationPatient directions not orthogonal "
                            f"(dot {float(row @ col):.3g})")
    if not all(v is not None and math.isfinite(v) and v > 0 for v in spacing):
        problems.append(f"PixelSpacing not finite and positive {spacing}")
    return problems


def _pixel_data_problem(ds: pydicom.Dataset, row: dict[str, Any], size: int) -> tuple[str, str] | None:
    """(status, reason) when the file cannot hold its pixel data, None when it can."""
    if PIXEL_DATA not in ds:
        return "no_pixels", "no PixelData element"
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)  # raw: offset and length, no read
    length = getattr(element, "length", None)
    tell = getattr(element, "value_tell", None)
    bits = _int(ds, "BitsAllocated") or 16
    expected = ((row["rows"] or 0) * (row["columns"] or 0) * (_int(ds, "SamplesPerPixel") or 1)
                * (_int(ds, "NumberOfFrames") or 1) * bits // 8)
    undefined = length in (None, 0xFFFFFFFF)  # encapsulated (compressed) pixel data
    # A deflated file's offsets count in the inflated stream, not in the file on disk.
    on_disk = row["transfer_syntax"] != DEFLATED
    if on_disk and tell is not None and not undefined and tell + length > size:
        return "truncated", f"PixelData needs {length} bytes from offset {tell}, file has {size}"
    if not undefined and length is not None and length < expected:
        return "truncated", (f"PixelData holds {length} bytes, "
                             f"{row['rows']}x{row['columns']} needs {expected}")
    return None


def read_instance_header(path: Path, study_id: int, series_id: int) -> dict[str, Any]:
    """Header of one file; never raises: problems become ``status`` and ``error``.

    ``instance_number`` here is the header's InstanceNumber (or the file name's number when
    the header has none); :func:`assign_instance_keys` makes it unique within the series.
    """
    row: dict[str, Any] = {key: None for key in INSTANCE_SCHEMA}
    row.update(study_id=study_id, series_id=series_id, path=str(path), status="ok")
    try:
        size = path.stat().st_size
        row["file_size"] = size
        ds = pydicom.dcmread(path, defer_size=256)
        row["transfer_syntax"] = str(ds.file_meta.get("TransferSyntaxUID", "")) or None
        _fill_header_values(ds, row)
        problem = _pixel_data_problem(ds, row, size)
    except Exception as error:  # pydicom raises many kinds for broken files
        row.update(status="unreadable", error=f"{type(error).__name__}: {error}"[:300])
        return row
    if problem is not None:
        row.update(status=problem[0], error=problem[1])
    elif row["rows"] is None or row["columns"] is None or not (row["rows"] > 0 and row["columns"] > 0):
        row.update(status="bad_header", error=f"Rows/Columns missing or invalid "
                                              f"({row['rows']}, {row['columns']})")
    elif any(row[c] is None for c in GEOMETRY_COLUMNS):
        missing = [c for c in GEOMETRY_COLUMNS if row[c] is None]
        row.update(status="no_geometry", error=f"missing or invalid {', '.join(missing)}")
    elif problems := geometry_problems([row[f"ipp_{a}"] for a in "xyz"],
                                       [row[f"iop_{i}"] for i in range(6)],
                                       [row["pixel_spacing_row"], row["pixel_spacing_col"]]):
        row.update(status="bad_geometry", error="bad_geometry: " + "; ".join(problems))
    return row


def _fill_header_values(ds: pydicom.Dataset, row: dict[str, Any]) -> None:
    row["dicom_instance_number"] = _int(ds, "InstanceNumber")
    stem = Path(row["path"]).stem
    row["instance_number"] = (row["dicom_instance_number"] if row["dicom_instance_number"] is not None
                              else int(stem) if stem.isdigit() else None)
    for axis, name in enumerate("xyz"):
        row[f"ipp_{name}"] = _float(ds, "ImagePositionPatient", axis)
    for i in range(6):
        row[f"iop_{i}"] = _float(ds, "ImageOrientationPatient", i)
    row["pixel_spacing_row"] = _float(ds, "PixelSpacing", 0)
    row["pixel_spacing_col"] = _float(ds, "PixelSpacing", 1)
    row["slice_thickness"] = _float(ds, "SliceThickness")
    row["spacing_between_slices"] = _float(ds, "SpacingBetweenSlices")
    row["slice_location"] = _float(ds, "SliceLocation")
    row["patient_position"] = str(ds.get("PatientPosition", "") or "") or None
    row["dicom_series_description"] = str(ds.get("SeriesDescription", "") or "") or None
    row["rows"], row["columns"] = _int(ds, "Rows"), _int(ds, "Columns")
    row["bits_stored"] = _int(ds, "BitsStored")


def assign_instance_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """Make ``instance_number`` unique within each series, so a slice is one file.

    A header InstanceNumber used once in its series is kept. Of files sharing a number, the
    one whose file name is that number keeps it (the competition names files by instance
    number), else the first by path; the others, and files without a number, take their
    file name's number when it is free, else a new number above every number in the series.
    ``note`` records every change. Only usable (``ok``) files are keyed: the others are
    never read again.
    """
    if frame.is_empty():
        return frame
    out = [frame.filter(pl.col("status") != "ok")]  # unusable files: their status says why
    for (_,), series in (frame.filter(pl.col("status") == "ok").sort("path")
                         .group_by("series_id", maintain_order=True)):
        numbers = series["instance_number"].to_list()
        if None not in numbers and len(set(numbers)) == len(numbers):
            out.append(series)
            continue
        paths = series["path"].to_list()
        stems = [int(Path(p).stem) if Path(p).stem.isdigit() else None for p in paths]
        keys: list[int | None] = [None] * len(paths)
        taken: set[int] = set()
        for i, n in enumerate(numbers):  # files named by their own number first
            if n is not None and stems[i] == n and n not in taken:
                keys[i] = n
                taken.add(n)
        for i, n in enumerate(numbers):
            if keys[i] is None and n is not None and n not in taken and numbers.count(n) == 1:
                keys[i] = n
                taken.add(n)
        next_free = max([v for v in numbers + stems if v is not None], default=0) + 1
        notes = series["note"].to_list()
        for i in range(len(paths)):
            if keys[i] is not None:
                continue
            if stems[i] is not None and stems[i] not in taken:
                keys[i] = stems[i]
            else:
                while next_free in taken:
                    next_free += 1
                keys[i] = next_free
            taken.add(keys[i])
            why = ("no InstanceNumber" if numbers[i] is None
                   else f"InstanceNumber {numbers[i]} shared with another file")
            notes[i] = f"{why}: slice keyed as instance {keys[i]}"
            log.warning("%s: %s", paths[i], notes[i])
        out.append(series.with_columns(instance_number=pl.Series(keys, dtype=pl.Int64),
                                       note=pl.Series(notes, dtype=pl.String)))
    return pl.concat(out).sort("series_id", "path")


def _code_fingerprint() -> str:
    """Hash of the code a cache entry depends on: this module and every package module it
    can execute (its import closure, derived as the workflow's code inputs are) plus the
    pydicom version, so a code change invalidates the cache without a hand-kept list."""
    return hashlib.sha256(f"{pydicom.__version__} {code_digest(Path(__file__))}".encode()).hexdigest()


CODE_FINGERPRINT = _code_fingerprint()


def _study_fingerprint(study_dir: Path, files: list[Path]) -> str:
    """The code, where the study lies (its rows hold paths: a moved folder is parsed again)
    and each file's name, size and mtime."""
    stats = [(f"{p.parent.name}/{p.name}", p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([CODE_FINGERPRINT, str(study_dir.absolute()), stats])


def parse_study(study_dir: Path, series_ids: Iterable[int], cache_dir: Path | None) -> pl.DataFrame:
    """Instance rows of one study (listed series only), reusing the cache when unchanged."""
    study_id = int(study_dir.name)
    series_ids = sorted(set(series_ids))
    files = sorted(p for s in series_ids for p in (study_dir / str(s)).glob("*.dcm"))
    fingerprint = _study_fingerprint(study_dir, files)
    cache = cache_dir / f"{study_id}.parquet" if cache_dir else None
    if cache is not None and (cached := read_cached(cache, fingerprint, INSTANCE_SCHEMA)) is not None:
        return cached
    rows = [read_instance_header(p, study_id, int(p.parent.name)) for p in files]
    frame = assign_instance_keys(pl.DataFrame(rows, schema=INSTANCE_SCHEMA))
    if cache is not None:
        write_cached(frame, cache, fingerprint)
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
    "n_renumbered": pl.Int64, "defects": pl.String,
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
    out["n_renumbered"] = int(rows["note"].is_not_null().sum()) if rows.height else 0
    defects = _file_defects(rows) if rows.height else []
    out["defects"] = "; ".join(defects) or None
    if ok.height == 0:
        out["geometry_error"] = (f"no usable slice: {defects[0]}" if defects and rows.height
                                 else "no readable slice" if rows.height else "no files")
        return out
    if ok.height == 1:  # usable, but no neighbour slices and no slice spacing
        out["defects"] = "; ".join(defects + ["a single usable slice"])
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
    if any(ok[c].n_unique() > 1 and ok[c].std() > 1e-3
           for c in ("pixel_spacing_row", "pixel_spacing_col")):
        problems.append("pixel spacing varies across slices")
    if not out["known_description"]:
        problems.append(f"unknown series description {description!r}" if description
                        else "unknown series description (empty in the series CSV)")
    out["geometry_error"] = "; ".join(problems) or None
    out["geometry_ok"] = not problems
    return out


def _file_defects(rows: pl.DataFrame) -> list[str]:
    """What is wrong with some files of a series, in words (empty when nothing is)."""
    defects = []
    bad = rows.filter(pl.col("status") != "ok")
    if bad.height:
        counts = ", ".join(f"{n} {status}" for status, n in
                           bad.group_by("status").len().sort("status").iter_rows())
        first = bad.sort("path").row(0, named=True)
        defects.append(f"{bad.height} of {rows.height} files unusable ({counts}; "
                       f"{Path(first['path']).name}: {first['error']})")
    renumbered = rows.filter(pl.col("note").is_not_null())
    if renumbered.height:
        defects.append(f"{renumbered.height} slices keyed by file, not InstanceNumber "
                       f"({renumbered['note'][0]})")
    return defects


def summarize_series(instances: pl.DataFrame, series_table: pl.DataFrame) -> pl.DataFrame:
    """series.parquet: one row per series of ``series_table``, folder present or not."""
    by_series = {key: frame for key, frame in instances.group_by("study_id", "series_id")}
    rows = []
    for study_id, series_id, description in series_table.select(
            "study_id", "series_id", "series_description").iter_rows():
        frame = by_series.get((study_id, series_id), instances.clear())
        rows.append(summarize_one_series(study_id, series_id, description, frame))
    return pl.DataFrame(rows, schema=SERIES_SCHEMA)


def parse_shard(image_root: Path, split: str, series_table: pl.DataFrame,
                cache_dir: Path | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Instance rows and series rows (``summarize_series``, with ``split``) of the studies of
    ``series_table`` (one shard), their images under ``image_root/<study_id>/``."""
    series_table = series_table.sort("study_id", "series_id")
    instances = parse_instances(image_root, series_table, cache_dir).with_columns(
        split=pl.lit(split))
    series = summarize_series(instances, series_table).with_columns(split=pl.lit(split))
    return instances, series
