"""Localization measured against the synthetic ground truth (level_centers.csv).

Per series type: slice accuracy of both slice methods and of the slice actually used, point
error quantiles, the share of gross errors (over ``GROSS_ERROR_MM``), and whether the targets
hold (``TARGETS``: p95 point error under 5 mm, the used slice within one of the true slice
for at least 98% of levels, gross errors under 1%)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from spinepipe.geometry import StackGeometry
from spinepipe.localize.samples import TASK_OF

GROSS_ERROR_MM = 15.0
TARGETS = {"point_error_mm_p95_below": 5.0, "slice_within_one_at_least": 0.98,
           "gross_error_share_below": 0.01}


def _truth_point(center: dict[str, Any], condition: str) -> np.ndarray:
    c = np.array([center["x_mm"], center["y_mm"], center["z_mm"]])
    lateral = np.array([center["lateral_x"], center["lateral_y"], center["lateral_z"]])
    if condition.startswith("Spinal"):
        return c
    sign = 1.0 if condition.startswith("Left") else -1.0
    offset = center["foramen_offset_mm"] if "Foraminal" in condition else center["recess_offset_mm"]
    return c + sign * offset * lateral


def evaluate_localization(predictions: pl.DataFrame, geometries: dict[int, StackGeometry],
                          level_centers: pl.DataFrame) -> dict[str, Any]:
    """Slice accuracy per series type for both slice methods; point error (mm) per series
    type and level: in-plane distance from the true point's projection on the chosen slice."""
    centers = {(r["study_id"], r["level"]): r for r in level_centers.iter_rows(named=True)}
    rows = []
    for r in predictions.iter_rows(named=True):
        center = centers.get((r["study_id"], r["level"]))
        if center is None or r["series_id"] not in geometries:
            continue
        geometry = geometries[r["series_id"]]
        truth = _truth_point(center, r["condition"])
        if r["series_description"] == "Axial T2":
            reference = np.array([center["x_mm"], center["y_mm"], center["z_mm"]])
        else:
            reference = truth
        true_slice, _ = geometry.nearest(reference)
        plane = geometry.plane(r["slice_index"])
        x, y, _ = plane.to_pixel(truth)
        error_mm = float(np.hypot((x - r["x"]) * plane.pixel_spacing[1],
                                  (y - r["y"]) * plane.pixel_spacing[0]))
        row = {"task": TASK_OF[r["series_description"]], "level": r["level"], "error_mm": error_mm,
               "used_within_one": abs(r["slice_index"] - true_slice) <= 1}
        for method in ("geometric", "learned"):
            chosen = r[f"{method}_slice"]
            row[f"{method}_exact"] = None if chosen is None else chosen == true_slice
            row[f"{method}_within_one"] = None if chosen is None else abs(chosen - true_slice) <= 1
        rows.append(row)
    frame = pl.DataFrame(rows)
    result: dict[str, Any] = {}
    if frame.height == 0:
        return result
    for (task,), group in frame.group_by("task", maintain_order=True):
        entry: dict[str, Any] = {"n": group.height}
        for method in ("geometric", "learned"):
            for metric in ("exact", "within_one"):
                values = group[f"{method}_{metric}"].drop_nulls()
                entry[f"slice_{method}_{metric}"] = float(values.mean()) if values.len() else None
        errors = group["error_mm"].to_numpy()
        entry["slice_within_one"] = float(group["used_within_one"].mean())
        entry["point_error_mm_median"] = float(np.median(errors))
        entry["point_error_mm_p95"] = float(np.percentile(errors, 95))
        entry["gross_error_share"] = float((errors > GROSS_ERROR_MM).mean())
        entry["targets_met"] = {
            "point_error_mm_p95": entry["point_error_mm_p95"] < TARGETS["point_error_mm_p95_below"],
            "slice_within_one": entry["slice_within_one"] >= TARGETS["slice_within_one_at_least"],
            "gross_error_share": entry["gross_error_share"] < TARGETS["gross_error_share_below"]}
        entry["per_level"] = {
            level: {"median": float(np.median(g["error_mm"])), "p95": float(np.percentile(g["error_mm"], 95))}
            for (level,), g in group.sort("level").group_by("level", maintain_order=True)}
        result[task] = entry
    all_errors = frame["error_mm"].to_numpy()
    result["overall_point_error_mm_median"] = float(np.median(all_errors))
    result["overall_point_error_mm_p95"] = float(np.percentile(all_errors, 95))
    result["overall_gross_error_share"] = float((all_errors > GROSS_ERROR_MM).mean())
    result["targets"] = TARGETS
    result["all_targets_met"] = all(all(result[task]["targets_met"].values())
                                    for task in frame["task"].unique().to_list())
    return result
