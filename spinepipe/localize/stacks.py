"""Series stacks resized for the localization models, decoded once and cached as .npz.

Each series becomes ``images`` (n_slices, size, size) float16 in position order (never
instance order), with its instance numbers, the scale from model pixels back to DICOM
pixels and ``slice_ok`` (n_slices,) bool. Intensities are clipped at the series' 0.5/99.5
percentiles and scaled to [0, 1].

Slices are decoded one by one (``spinepipe.pixels.decode_slices``): a slice that cannot be
decoded is an all-zero image in its place with ``slice_ok`` False, the percentiles come
from the decoded slices only, and the index row keeps status ``ok`` with ``lost_slices``
and an ``error`` naming the lost files and why. A series is ``unreadable`` only when none
of its slices decodes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import polars as pl
from numpy.typing import NDArray
from tqdm import tqdm

from spinepipe.constants import SERIES_DESCRIPTIONS
from spinepipe.pixels import decode_slices, describe_lost

log = logging.getLogger(__name__)

STACK_INDEX_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                      "n_slices": pl.Int64, "rows": pl.Int64, "columns": pl.Int64,
                      "path": pl.String, "status": pl.String, "error": pl.String,
                      "lost_slices": pl.Int64}


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


def build_stacks(instances: pl.DataFrame, series: pl.DataFrame, size_by_description: dict[str, int],
                 out_dir: Path) -> pl.DataFrame:
    """Write one .npz per usable series; return the index (with reasons for the rest)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = instances.filter(pl.col("status") == "ok")
    paths_by_series = {sid: frame for (sid,), frame in ok.group_by("series_id")}
    rows: list[dict[str, Any]] = []
    for s in tqdm(series.iter_rows(named=True), total=series.height, desc="stacks", disable=None):
        row = {"study_id": s["study_id"], "series_id": s["series_id"],
               "series_description": s["series_description"], "n_slices": 0, "rows": s["rows"],
               "columns": s["columns"], "path": None, "status": "ok", "error": None,
               "lost_slices": 0}
        if s["series_description"] not in SERIES_DESCRIPTIONS or not s["geometry_ok"]:
            row.update(status="skipped", error=s["geometry_error"] or "unknown description")
            rows.append(row)
            continue
        frame = paths_by_series[s["series_id"]]
        order = {n: i for i, n in enumerate(s["instances_by_position"])}
        frame = frame.with_columns(
            pos=pl.col("instance_number").replace_strict(order, default=None)).sort("pos")
        try:
            stack = load_stack(frame["path"].to_list(), size_by_description[s["series_description"]])
        except NoSliceDecoded as error:  # files that passed the header check may still not decode
            row.update(status="unreadable", error=str(error), lost_slices=frame.height)
            log.warning("series %s: unreadable: %s", s["series_id"], row["error"])
            rows.append(row)
            continue
        except Exception as error:  # anything else about one series never stops the others
            row.update(status="unreadable", error=f"{type(error).__name__}: {error}"[:300])
            log.exception("series %s: cannot build the stack", s["series_id"])
            rows.append(row)
            continue
        volume = stack.images
        if stack.lost is not None:
            log.warning("series %s: %s", s["series_id"], stack.lost)
        path = out_dir / f"{s['series_id']}.npz"
        tmp = path.with_name(f".{path.name}.tmp")  # atomic: a killed job leaves no half file
        with tmp.open("wb") as handle:
            np.savez(handle, images=volume.astype(np.float16),
                     instance_numbers=frame["instance_number"].to_numpy(),
                     scale=np.array([stack.columns / volume.shape[2], stack.rows / volume.shape[1]]),
                     slice_ok=stack.slice_ok)
        os.replace(tmp, path)
        row.update(n_slices=volume.shape[0], rows=stack.rows, columns=stack.columns, path=str(path),
                   error=stack.lost, lost_slices=int((~stack.slice_ok).sum()))
        rows.append(row)
    return pl.DataFrame(rows, schema=STACK_INDEX_SCHEMA)


class StackCache:
    """Lazy access to cached stacks by series_id."""

    def __init__(self, index: pl.DataFrame) -> None:
        self.paths = {r["series_id"]: r["path"] for r in index.filter(pl.col("status") == "ok")
                      .iter_rows(named=True)}
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __contains__(self, series_id: int) -> bool:
        return series_id in self.paths

    def get(self, series_id: int) -> dict[str, np.ndarray]:
        """``images``, ``instance_numbers``, ``scale`` and ``slice_ok`` (all True for stacks
        cached before slices could be lost)."""
        if series_id not in self._cache:
            with np.load(self.paths[series_id]) as data:
                stack = {k: data[k] for k in data.files}
            stack.setdefault("slice_ok", np.ones(len(stack["images"]), dtype=bool))
            self._cache[series_id] = stack
        return self._cache[series_id]
