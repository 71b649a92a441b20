"""Series stacks resized for the localization models, decoded once and cached as .npz.

Each series becomes ``images`` (n_slices, size, size) float16 in position order (never
instance order), with its instance numbers and the scale from model pixels back to DICOM
pixels. Intensities are clipped at the series' 0.5/99.5 percentiles and scaled to [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import polars as pl
import pydicom
from tqdm import tqdm

from spinepipe.constants import SERIES_DESCRIPTIONS

log = logging.getLogger(__name__)

STACK_INDEX_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                      "n_slices": pl.Int64, "rows": pl.Int64, "columns": pl.Int64,
                      "path": pl.String, "status": pl.String, "error": pl.String}


def normalize(volume: np.ndarray) -> np.ndarray:
    low, high = np.percentile(volume, [0.5, 99.5])
    return np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0)


def load_stack(paths: list[str], size: int) -> tuple[np.ndarray, int, int]:
    """Decode and resize the slices (already in position order)."""
    images = [pydicom.dcmread(p).pixel_array.astype(np.float32) for p in paths]
    rows, columns = images[0].shape
    volume = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
                       if im.shape == (rows, columns) else
                       cv2.resize(cv2.resize(im, (columns, rows)), (size, size),
                                  interpolation=cv2.INTER_AREA) for im in images])
    return normalize(volume), rows, columns


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
               "columns": s["columns"], "path": None, "status": "ok", "error": None}
        if s["series_description"] not in SERIES_DESCRIPTIONS or not s["geometry_ok"]:
            row.update(status="skipped", error=s["geometry_error"] or "unknown description")
            rows.append(row)
            continue
        frame = paths_by_series[s["series_id"]]
        order = {n: i for i, n in enumerate(s["instances_by_position"])}
        frame = frame.with_columns(
            pos=pl.col("instance_number").replace_strict(order, default=None)).sort("pos")
        try:
            volume, n_rows, n_cols = load_stack(frame["path"].to_list(),
                                                size_by_description[s["series_description"]])
        except Exception as error:  # a file that passed the header check may still not decode
            row.update(status="unreadable", error=f"{type(error).__name__}: {error}"[:300])
            log.warning("series %s: %s", s["series_id"], row["error"])
            rows.append(row)
            continue
        path = out_dir / f"{s['series_id']}.npz"
        np.savez(path, images=volume.astype(np.float16),
                 instance_numbers=frame["instance_number"].to_numpy(),
                 scale=np.array([n_cols / volume.shape[2], n_rows / volume.shape[1]]))
        row.update(n_slices=volume.shape[0], rows=n_rows, columns=n_cols, path=str(path))
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
        if series_id not in self._cache:
            with np.load(self.paths[series_id]) as data:
                self._cache[series_id] = {k: data[k] for k in data.files}
        return self._cache[series_id]
