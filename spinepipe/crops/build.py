"""The crop cache: every view of every study and level of a shard, in one memory-mappable
array with an index parquet; each series is decoded once, whatever its number of crops.

A view that cannot be cut (no series, no point, an unreadable series, a point outside the
image, a lateral view beyond the stack's last slice) is stored as zeros with an all-false slice mask and a status saying why, so every
(study, level, view) has a row and inference never has to guess what is missing.

Slices are decoded one by one (``spinepipe.pixels.decode_slices``), so one slice that cannot
be decoded never costs the series: it is masked out of every crop that would have used it
(False in ``slice_mask``, zeros, or the nearest slice's copy with ``fill: nearest``, as for
a slice beyond the stack), the series' intensity percentiles come from its decoded slices,
and every row of the series carries ``lost_slices`` (how many of its slices were lost) and
``lost_reason`` (which files and why; null when none). A view whose *target* slice is the
lost one is not cut around a neighbour: it gets status ``unreadable_slice``, zeros and an
all-false mask like any other view that cannot be cut. A series none of whose slices decodes
is ``unreadable``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray
from tqdm import tqdm

from spinepipe.constants import AXIAL_T2, LEVEL_NAMES, LEVELS
from spinepipe.crops.extract import CropSpec, crop_view
from spinepipe.crops.views import VIEWS, View
from spinepipe.geometry import StackGeometry
from spinepipe.pixels import DecodedSlices, decode_slices, describe_lost
from spinepipe.xref import stack_geometries

log = logging.getLogger(__name__)

INDEX_SCHEMA = {"row": pl.Int64, "study_id": pl.Int64, "level": pl.String, "view": pl.String,
                "series_id": pl.Int64, "instance_number": pl.Int64, "slice_index": pl.Int64,
                "x": pl.Float64, "y": pl.Float64, "source": pl.String, "status": pl.String,
                "n_slices": pl.Int64, "slice_mask": pl.List(pl.Boolean),
                "lost_slices": pl.Int64, "lost_reason": pl.String}


def _plan_view(study_id: int, level: str, view: View, points: pl.DataFrame,
               geometries: dict[int, StackGeometry], study_axials: list[int],
               canal_point: np.ndarray | None) -> dict[str, Any]:
    """Where to cut one view: series, target slice and pixel, or the reason it cannot be cut."""
    plan: dict[str, Any] = {"study_id": study_id, "level": level, "view": view.name,
                            "series_id": None, "instance_number": None, "slice_index": None,
                            "x": None, "y": None, "source": None, "status": "no_point"}
    rows = points.filter(pl.col("condition").is_in(view.conditions)
                         & (pl.col("series_description") == view.series_description))
    if rows.height:
        # the first series/slice that carries a point; several points there are averaged
        first = rows.row(0, named=True)
        same = rows.filter((pl.col("series_id") == first["series_id"])
                           & (pl.col("instance_number") == first["instance_number"]))
        plan.update(series_id=first["series_id"], instance_number=first["instance_number"],
                    x=float(same["x"].mean()), y=float(same["y"].mean()),
                    source="+".join(sorted(set(same["source"].to_list()))))
    elif view.series_description == AXIAL_T2 and canal_point is not None and study_axials:
        # no axial point: the sagittal canal point projected onto the nearest axial slice
        best = min((abs(geometries[s].nearest(canal_point)[1]), s) for s in study_axials)
        series_id = best[1]
        index, _ = geometries[series_id].nearest(canal_point)
        x, y = geometries[series_id].to_pixel(index, canal_point)
        plan.update(series_id=series_id, instance_number=int(geometries[series_id].instance_numbers[index]),
                    x=x, y=y, source="sagittal_projection")
    if plan["series_id"] is None:
        return plan
    geometry = geometries.get(plan["series_id"])
    if geometry is None:
        plan["status"] = "no_series"
        return plan
    try:
        plan["slice_index"] = geometry.index_of(plan["instance_number"])
    except KeyError:
        plan["status"] = "no_slice"
        return plan
    if view.lateral_mm and not _move_laterally(plan, geometry, view):
        plan["status"] = "beyond_stack"
        return plan
    if not geometry.in_image(plan["slice_index"], plan["x"], plan["y"]):
        plan["status"] = "out_of_image"
        return plan
    plan["status"] = "ok"
    return plan


def _move_laterally(plan: dict[str, Any], geometry: StackGeometry, view: View) -> bool:
    """Move ``plan``'s target to the slice ``view.lateral_mm`` from its point toward the
    view's side (the point projected onto that slice); False when the stack ends more than
    one slice spacing short of it."""
    index = plan["slice_index"]
    point = geometry.to_patient(index, plan["x"], plan["y"])
    normal = geometry.normals[index]
    toward = normal if normal @ np.asarray(view.slice_axis) >= 0 else -normal
    target = point + view.lateral_mm * toward
    moved, distance = geometry.nearest(target)
    if abs(distance) > max(geometry.spacing, 1.0):
        return False
    x, y = geometry.to_pixel(moved, target)
    plan.update(slice_index=moved, instance_number=int(geometry.instance_numbers[moved]), x=x, y=y)
    return True


def _canal_point(points: pl.DataFrame, geometries: dict[int, StackGeometry]) -> np.ndarray | None:
    canal = points.filter(pl.col("condition") == "Spinal Canal Stenosis")
    for r in canal.iter_rows(named=True):
        geometry = geometries.get(r["series_id"])
        if geometry is None:
            continue
        try:
            return geometry.to_patient(geometry.index_of(r["instance_number"]), r["x"], r["y"])
        except KeyError:
            continue
    return None


def plan_crops(studies: list[int], coordinates: pl.DataFrame, series: pl.DataFrame,
               geometries: dict[int, StackGeometry]) -> list[dict[str, Any]]:
    plans = []
    by_study = {sid: frame for (sid,), frame in coordinates.group_by("study_id")}
    for study_id in studies:
        points = by_study.get(study_id, coordinates.clear())
        axials = [s for s in series.filter((pl.col("study_id") == study_id)
                                           & (pl.col("series_description") == AXIAL_T2))["series_id"]
                  if s in geometries]
        for level in LEVELS:
            at_level = points.filter(pl.col("level") == LEVEL_NAMES[level])
            canal = _canal_point(at_level, geometries)
            for view in VIEWS.values():
                plans.append(_plan_view(study_id, level, view, at_level, geometries, axials, canal))
    return plans


def scale_series(decoded: DecodedSlices) -> list[NDArray[np.float32] | None]:
    """Intensities clipped at the 0.5/99.5 percentiles of the decoded slices (every 4th pixel)
    and scaled to [0, 1]; lost slices stay ``None``."""
    kept = [im for im in decoded.images if im is not None]
    if not kept:
        return list(decoded.images)
    sample = np.concatenate([im[::4, ::4].ravel() for im in kept])
    low, high = np.percentile(sample, [0.5, 99.5])
    return [None if im is None else np.clip((im - low) / max(high - low, 1e-6), 0.0, 1.0)
            for im in decoded.images]


def decode_series(paths: list[str]) -> tuple[list[NDArray[np.float32] | None], str | None]:
    """Every slice of a series (in the given, position order), intensities scaled per series;
    ``None`` for a slice that could not be decoded, and the description of the lost ones."""
    decoded = decode_slices(paths)
    return scale_series(decoded), describe_lost(paths, decoded)


def build_crops(studies: list[int], coordinates: pl.DataFrame, instances: pl.DataFrame,
                series: pl.DataFrame, cfg: dict[str, Any], array_path: Path) -> pl.DataFrame:
    """Write the crops of ``studies`` to ``array_path`` (.npy, float16
    (n_rows, cached_slices, cached_size, cached_size)) and return the index."""
    series = series.filter(pl.col("study_id").is_in(studies))
    instances = instances.filter(pl.col("study_id").is_in(studies))
    geometries = stack_geometries(instances, series)
    plans = plan_crops(studies, coordinates, series, geometries)
    specs = {name: CropSpec.for_view(view, cfg) for name, view in VIEWS.items()}
    any_spec = next(iter(specs.values()))
    shape = (len(plans), any_spec.cached_slices, any_spec.cached_size, any_spec.cached_size)
    array_path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float16, shape=shape)
    masks = np.zeros((len(plans), any_spec.cached_slices), dtype=bool)
    by_series: dict[int, list[int]] = defaultdict(list)
    for i, plan in enumerate(plans):
        if plan["status"] == "ok":
            by_series[plan["series_id"]].append(i)
    paths = {sid: dict(zip(f["instance_number"].to_list(), f["path"].to_list()))
             for (sid,), f in instances.filter(pl.col("status") == "ok").group_by("series_id")}
    for plan in plans:
        plan.update(lost_slices=0, lost_reason=None)
    for series_id, rows in tqdm(by_series.items(), desc="crops", disable=None):
        geometry = geometries[series_id]
        series_paths = [paths[series_id][n] for n in geometry.instance_numbers]
        try:
            images, lost = decode_series(series_paths)
        except Exception as error:  # anything else about one series never stops the others
            images, lost = [None] * len(series_paths), f"{type(error).__name__}: {error}"[:300]
            log.exception("series %s: cannot decode", series_id)
        n_lost = sum(im is None for im in images)
        if lost is not None:
            log.warning("series %s: %s", series_id, lost)
        for i in rows:
            plan = plans[i]
            plan.update(lost_slices=n_lost, lost_reason=lost)
            if n_lost == len(images):
                plan["status"] = "unreadable"
            elif images[plan["slice_index"]] is None:
                plan["status"] = "unreadable_slice"
            else:
                array[i], masks[i] = crop_view(images, geometry, plan["slice_index"], plan["x"],
                                               plan["y"], VIEWS[plan["view"]], specs[plan["view"]])
    array.flush()
    for i, plan in enumerate(plans):
        plan.update(row=i, n_slices=int(masks[i].sum()), slice_mask=masks[i].tolist())
    index = pl.DataFrame(plans, schema=INDEX_SCHEMA)
    counts = Counter(index["status"].to_list())
    log.info("%d crops of %d studies: %s", len(plans), len(studies), dict(counts))
    return index


def crop_summary(index: pl.DataFrame) -> dict[str, Any]:
    """Counts of crops per view and status, of missing neighbour slices, and of slices that
    could not be decoded (in all, series touched, views cut from such a series, views whose
    target slice was lost)."""
    by_status = index.group_by("view", "status").len().sort("view", "status")
    ok = index.filter(pl.col("status") == "ok")
    cached = int(index["slice_mask"].list.len().max() or 0)
    summary = {"n_crops": index.height,
               "by_view_status": {f"{r['view']}/{r['status']}": r["len"]
                                  for r in by_status.iter_rows(named=True)},
               "missing_views": int((index["status"] != "ok").sum()),
               "missing_neighbour_slices": int((cached - ok["n_slices"]).sum()) if ok.height else 0}
    if "lost_slices" in index.columns:  # indices written before slices could be lost lack it
        damaged = (index.filter(pl.col("lost_slices") > 0)
                   .unique("series_id").select("series_id", "lost_slices"))
        summary.update(lost_slices=int(damaged["lost_slices"].sum()),
                       series_with_lost_slices=damaged.height,
                       ok_views_of_damaged_series=int(ok.filter(pl.col("lost_slices") > 0).height),
                       unreadable_target_slices=int((index["status"] == "unreadable_slice").sum()))
    return summary
