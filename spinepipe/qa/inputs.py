"""Gathering one study's ``StudyInputs`` from the files a pipeline run wrote.

Every source is optional but the series table and geometries: what is absent is simply not
drawn (and the sheet says so). Nothing here decodes DICOM: images come from the localizer
stack cache (``results/localize/stacks``), crops from the crop cache's memory-mapped arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from spinepipe.constants import SERIES_DESCRIPTIONS
from spinepipe.geometry import StackGeometry
from spinepipe.localize.stacks import StackCache
from spinepipe.qa.types import CropView, SeriesStack, StudyInputs


def stack_in_geometry_order(stack: dict[str, np.ndarray],
                            geometry: StackGeometry) -> tuple[np.ndarray, np.ndarray]:
    """A cached stack's images and ``slice_ok`` in the geometry's slice order (they are the
    same order when both come from one run; matched by instance number otherwise, a slice
    the stack lacks being zeros and not ok)."""
    images, numbers = stack["images"], np.asarray(stack["instance_numbers"])
    ok = np.asarray(stack.get("slice_ok", np.ones(len(images), dtype=bool)), dtype=bool)
    if np.array_equal(numbers, geometry.instance_numbers):
        return images, ok
    where = {int(n): i for i, n in enumerate(numbers)}
    out = np.zeros((len(geometry), *images.shape[1:]), dtype=images.dtype)
    out_ok = np.zeros(len(geometry), dtype=bool)
    for j, n in enumerate(geometry.instance_numbers.tolist()):
        if n in where:
            out[j], out_ok[j] = images[where[n]], ok[where[n]]
    return out, out_ok


def _series_notes(study_series: pl.DataFrame, geometries: dict[int, StackGeometry],
                  stacks: StackCache | None) -> dict[str, list[str]]:
    notes: dict[str, list[str]] = {d: [] for d in SERIES_DESCRIPTIONS}
    for description in SERIES_DESCRIPTIONS:
        rows = study_series.filter(pl.col("series_description") == description)
        if rows.height == 0:
            notes[description].append("not listed for this study")
        for r in rows.iter_rows(named=True):
            if r["series_id"] not in geometries:
                why = r.get("geometry_error") or "no usable geometry"
                notes[description].append(f"series {r['series_id']}: {why}")
            elif stacks is not None and r["series_id"] not in stacks:
                notes[description].append(f"series {r['series_id']}: no cached stack (unreadable?)")
    return notes


def load_crops(crop_index: pl.DataFrame, study_id: int,
               crop_cfg: dict[str, Any] | None = None) -> dict[tuple[str, str], CropView]:
    """The study's crops from a crop index (``results/crops/{split}/index.parquet``: rows
    with ``level, view, array, row, status, slice_mask``); ``crop_cfg`` (config ``crops``)
    marks the model's window."""
    rows = crop_index.filter(pl.col("study_id") == study_id)
    arrays: dict[str, np.ndarray] = {}
    out: dict[tuple[str, str], CropView] = {}
    slices = None if crop_cfg is None else int(crop_cfg["slices"])
    margin = 0 if crop_cfg is None else int(crop_cfg["margin"])
    for r in rows.iter_rows(named=True):
        path = r["array"]
        if path not in arrays:
            arrays[path] = np.load(path, mmap_mode="r")
        out[(r["level"], r["view"])] = CropView(np.asarray(arrays[path][r["row"]], dtype=np.float32),
                                                np.asarray(r["slice_mask"], dtype=bool),
                                                r["status"], slices, margin)
    return out


def load_study_inputs(study_id: int, series: pl.DataFrame, geometries: dict[int, StackGeometry],
                      stacks: StackCache | None = None, predictions: pl.DataFrame | None = None,
                      coordinates: pl.DataFrame | None = None,
                      crop_index: pl.DataFrame | None = None,
                      crop_cfg: dict[str, Any] | None = None,
                      probabilities: pl.DataFrame | None = None,
                      labels_long: pl.DataFrame | None = None,
                      reasons: pl.DataFrame | None = None, *,
                      foramen_offset_mm: float) -> StudyInputs:
    """One study's sheet inputs.

    Args:
        series: ``series.parquet`` (study_id, series_id, series_description, geometry_error).
        geometries: ``spinepipe.xref.stack_geometries(instances, series)``.
        stacks: the localizer stack cache (``StackCache(stack_index)``); None: no images.
        predictions: ``predictions_{split}.parquet``.
        coordinates: annotated points (``read_coordinates``, or ``coordinates.parquet``,
            whose rows with a ``source`` other than ``annotated`` are left out).
        crop_index / crop_cfg: a crop index with its ``array`` column, and config ``crops``.
        probabilities: submission-like rows (``row_id``, ``normal_mild``, ``moderate``,
            ``severe``), e.g. ``oof_end_to_end.csv`` or the submission.
        labels_long: ``metric.labels_to_long`` of train.csv / test_labels.csv.
        reasons: ``unlocalized_{split}.csv`` (study_id, series_description, reason).
        foramen_offset_mm: config ``geometry.foramen_offset_mm`` (``StudyInputs``).
    """
    study_series = series.filter(pl.col("study_id") == study_id)
    stacks_by_id: dict[int, SeriesStack] = {}
    for r in study_series.iter_rows(named=True):
        sid = r["series_id"]
        if sid not in geometries or r["series_description"] not in SERIES_DESCRIPTIONS:
            continue
        geometry = geometries[sid]
        images = scale = ok = None
        if stacks is not None and sid in stacks:
            stack = stacks.get(sid)
            images, ok = stack_in_geometry_order(stack, geometry)
            scale = (float(stack["scale"][0]), float(stack["scale"][1]))
        stacks_by_id[sid] = SeriesStack(sid, r["series_description"], geometry, images, scale, ok)

    notes = _series_notes(study_series, geometries, stacks)
    if reasons is not None and reasons.height:
        for r in reasons.filter(pl.col("study_id") == study_id).iter_rows(named=True):
            notes.setdefault(r["series_description"] or "study", []).append(r["reason"])

    def of_study(frame: pl.DataFrame | None) -> pl.DataFrame | None:
        return None if frame is None else frame.filter(pl.col("study_id") == study_id)

    annotated = of_study(coordinates)
    if annotated is not None and "source" in annotated.columns:
        annotated = annotated.filter(pl.col("source") == "annotated")
    probs = None
    if probabilities is not None:
        probs = probabilities.filter(pl.col("row_id").str.starts_with(f"{study_id}_"))
    truth: dict[str, int] = {}
    if labels_long is not None:
        known = labels_long.filter((pl.col("study_id") == study_id) & pl.col("target").is_not_null())
        truth = dict(zip(known["row_id"].to_list(), known["target"].cast(pl.Int64).to_list()))
    crops = {} if crop_index is None else load_crops(crop_index, study_id, crop_cfg)
    return StudyInputs(study_id, stacks_by_id, of_study(predictions), annotated, crops, probs, truth,
                       {k: "; ".join(v) for k, v in notes.items() if v},
                       foramen_offset_mm=float(foramen_offset_mm))
