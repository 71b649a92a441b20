"""Series stacks resized for the localization models, decoded once per shard of studies.

Each series becomes ``images`` (n_slices, size, size) float16 in position order (never
instance order), with its instance numbers, the scale from model pixels back to DICOM
pixels and ``slice_ok`` (n_slices,) bool. Intensities are clipped at the series' 0.5/99.5
percentiles and scaled to [0, 1].

A shard's slices lie one after another in one ``.npy`` file (written slice by slice through
a memory map); its index (one row per series) holds the file, the series' first row in it
and the small arrays. Readers (``StackCache``) read the rows of one series, or one slice,
with plain file reads into arrays they own and keep a few series at most: a job's memory is
bounded by what it holds at once, never by the number of studies.

Slices are decoded one by one (``spinepipe.pixels.decode_slices``): a slice that cannot be
decoded is an all-zero image in its place with ``slice_ok`` False, the percentiles come
from the decoded slices only, and the index row keeps status ``ok`` with ``lost_slices``
and an ``error`` naming the lost files and why. A series is ``unreadable`` only when none
of its slices decodes.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import polars as pl
from numpy.typing import NDArray
from tqdm import tqdm

from spinepipe.constants import SERIES_DESCRIPTIONS
from spinepipe.npy_rows import NpyRows
from spinepipe.pixels import decode_slices, describe_lost

log = logging.getLogger(__name__)

STACK_INDEX_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                      "n_slices": pl.Int64, "rows": pl.Int64, "columns": pl.Int64,
                      "path": pl.String, "offset": pl.Int64,
                      "instance_numbers": pl.List(pl.Int64), "slice_ok": pl.List(pl.Boolean),
                      "scale_x": pl.Float64, "scale_y": pl.Float64,
                      "status": pl.String, "error": pl.String, "lost_slices": pl.Int64}
STACK_DTYPE = np.float16


def normalize(volume: np.ndarray, valid: NDArray[np.bool_] | None = None) -> np.ndarray:
    """Clip at the 0.5/99.5 percentiles of the ``valid`` slices (all by default), scale to
    [0, 1]; slices outside ``valid`` are set to 0."""
    valid = np.ones(len(volume), dtype=bool) if valid is None else valid
    low, high = np.percentile(volume[valid], [0.5, 99.5])
    out = np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0)
    out[~valid] = 0.0
    return out


@dataclass
class Stack:
    """A decoded, resized, normalised series; ``errors[i]`` says why slice ``i`` was lost."""

    images: NDArray[np.float32]   # (n_slices, size, size), zeros where a slice was lost
    rows: int                     # of the DICOM slices (the first decoded one)
    columns: int
    slice_ok: NDArray[np.bool_]   # (n_slices,)
    errors: list[str | None]
    lost: str | None              # "k of n slices could not be decoded: file: reason; ..."


class NoSliceDecoded(RuntimeError):
    """Not one slice of the series could be decoded."""


def _resize(image: NDArray[np.float32], rows: int, columns: int, size: int) -> NDArray[np.float32]:
    if image.shape != (rows, columns):  # an odd slice is brought to the series' matrix first
        image = cv2.resize(image, (columns, rows))
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def load_stack(paths: list[str], size: int) -> Stack:
    """Decode and resize the slices (already in position order), each on its own: a slice
    that fails becomes zeros; raises NoSliceDecoded when none decodes."""
    decoded = decode_slices(paths)
    ok = decoded.ok
    lost = describe_lost(paths, decoded)
    if not ok.any():
        raise NoSliceDecoded(lost or "no slices")
    rows, columns = next(im for im in decoded.images if im is not None).shape
    blank = np.zeros((size, size), dtype=np.float32)
    volume = np.stack([blank if im is None else _resize(im, rows, columns, size)
                       for im in decoded.images])
    return Stack(normalize(volume, ok), rows, columns, ok, decoded.errors, lost)


def _index_row(s: dict[str, Any]) -> dict[str, Any]:
    return {"study_id": s["study_id"], "series_id": s["series_id"],
            "series_description": s["series_description"], "n_slices": 0, "rows": s["rows"],
            "columns": s["columns"], "path": None, "offset": None, "instance_numbers": None,
            "slice_ok": None, "scale_x": None, "scale_y": None, "status": "ok", "error": None,
            "lost_slices": 0}


def build_stacks(instances: pl.DataFrame, series: pl.DataFrame, size: int,
                 array_path: Path) -> pl.DataFrame:
    """Decode every usable series of ``series`` into ``array_path`` (one .npy of
    (total slices, size, size) float16); return the index, with reasons for the rest.

    The file is sized for every candidate series up front and filled one series at a time
    through a memory map, so only one series is ever decoded in memory; rows reserved for a
    series that turns out unreadable stay zero and unreferenced."""
    array_path.parent.mkdir(parents=True, exist_ok=True)
    ok = instances.filter(pl.col("status") == "ok")
    paths_by_series = {sid: frame for (sid,), frame in ok.group_by("series_id")}
    usable = series.filter(pl.col("series_description").is_in(SERIES_DESCRIPTIONS)
                           & pl.col("geometry_ok").fill_null(False))
    total = sum(paths_by_series[sid].height for sid in usable["series_id"] if sid in paths_by_series)
    tmp = array_path.with_name(f".{array_path.name}.tmp")  # atomic: a killed job leaves no half file
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=STACK_DTYPE, shape=(total, size, size))
    rows: list[dict[str, Any]] = []
    cursor = 0
    for s in tqdm(series.iter_rows(named=True), total=series.height, desc="stacks", disable=None):
        row = _index_row(s)
        if s["series_description"] not in SERIES_DESCRIPTIONS or not s["geometry_ok"]:
            row.update(status="skipped", error=s["geometry_error"] or "unknown description")
            rows.append(row)
            continue
        frame = paths_by_series.get(s["series_id"])
        if frame is None:
            row.update(status="unreadable", error="no usable file")
            rows.append(row)
            continue
        order = {n: i for i, n in enumerate(s["instances_by_position"])}
        frame = frame.with_columns(
            pos=pl.col("instance_number").replace_strict(order, default=None)).sort("pos")
        try:
            stack = load_stack(frame["path"].to_list(), size)
        except NoSliceDecoded as error:  # files that passed the header check may still not decode
            row.update(status="unreadable", error=str(error), lost_slices=frame.height)
            log.warning("series %s: unreadable: %s", s["series_id"], row["error"])
            rows.append(row)
            cursor += frame.height
            continue
        except Exception as error:  # anything else about one series never stops the others
            row.update(status="unreadable", error=f"{type(error).__name__}: {error}"[:300])
            log.exception("series %s: cannot build the stack", s["series_id"])
            rows.append(row)
            cursor += frame.height
            continue
        volume = stack.images
        if stack.lost is not None:
            log.warning("series %s: %s", s["series_id"], stack.lost)
        array[cursor:cursor + len(volume)] = volume.astype(STACK_DTYPE)
        row.update(n_slices=volume.shape[0], rows=stack.rows, columns=stack.columns,
                   path=str(array_path), offset=cursor,
                   instance_numbers=frame["instance_number"].to_list(),
                   slice_ok=stack.slice_ok.tolist(),
                   scale_x=stack.columns / volume.shape[2], scale_y=stack.rows / volume.shape[1],
                   error=stack.lost, lost_slices=int((~stack.slice_ok).sum()))
        rows.append(row)
        cursor += frame.height
    array.flush()
    del array
    os.replace(tmp, array_path)
    return pl.DataFrame(rows, schema=STACK_INDEX_SCHEMA)


class StackCache:
    """Stacks by series_id, read from their shard files on demand; the ``keep`` series read
    last stay in memory (a study's series are used together), older ones are dropped."""

    def __init__(self, index: pl.DataFrame, keep: int = 8) -> None:
        usable = index.filter(pl.col("status") == "ok")
        self.rows = {r["series_id"]: r for r in usable.iter_rows(named=True)}
        self.keep = keep
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._files: dict[str, NpyRows] = {}

    def __contains__(self, series_id: int) -> bool:
        return series_id in self.rows

    def _read(self, row: dict[str, Any], first: int, count: int) -> np.ndarray:
        if row["path"] not in self._files:
            self._files[row["path"]] = NpyRows(row["path"])
        return self._files[row["path"]].read(row["offset"] + first, count)

    def get(self, series_id: int) -> dict[str, np.ndarray]:
        """``images`` (n_slices, size, size) float16, ``instance_numbers``, ``scale`` (x, y)
        and ``slice_ok``."""
        if series_id in self._cache:
            self._cache.move_to_end(series_id)
            return self._cache[series_id]
        row = self.rows[series_id]
        stack = {"images": self._read(row, 0, row["n_slices"]), **self.meta(series_id)}
        self._cache[series_id] = stack
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return stack

    def meta(self, series_id: int) -> dict[str, np.ndarray]:
        """What ``get`` returns but the images (no file read)."""
        row = self.rows[series_id]
        return {"instance_numbers": np.asarray(row["instance_numbers"], dtype=np.int64),
                "scale": np.array([row["scale_x"], row["scale_y"]]),
                "slice_ok": np.asarray(row["slice_ok"], dtype=bool)}

    def slice(self, series_id: int, index: int) -> np.ndarray:
        """One slice (size, size) float16, read on its own (training reads samples this way)."""
        if series_id in self._cache:
            return self._cache[series_id]["images"][index]
        return self._read(self.rows[series_id], index, 1)[0]
