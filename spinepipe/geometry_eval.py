"""Geometry stages measured against the synthetic ground truth (level_centers.csv)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from spinepipe.constants import SAGITTAL_T1, SAGITTAL_T2
from spinepipe.geometry import StackGeometry
from spinepipe.xref import sagittal_sides, select_sagittal_slices

log = logging.getLogger(__name__)
TIE_MM = 0.05  # two slices this close to equidistant are both "the nearest"


def _centres(level_centers: pl.DataFrame) -> dict[tuple[int, str], dict[str, Any]]:
    return {(r["study_id"], r["level"]): r for r in level_centers.iter_rows(named=True)}


def _vec(row: dict[str, Any], prefix: str, names=("x", "y", "z"), suffix: str = "") -> np.ndarray:
    return np.array([row[f"{prefix}{n}{suffix}"] for n in names])


def evaluate_sagittal_sides(series: pl.DataFrame, geometries: dict[int, StackGeometry],
                            level_centers: pl.DataFrame, foramen_offset_mm: float) -> dict[str, Any]:
    """Left/right of every sagittal slice and the foramen slice choice, against truth."""
    centres = _centres(level_centers)
    sagittal = series.filter(pl.col("series_description").is_in([SAGITTAL_T1, SAGITTAL_T2])
                             & pl.col("geometry_ok"))
    slices = correct = series_all_correct = picks = picks_correct = 0
    for study_id, series_id in sagittal.select("study_id", "series_id").iter_rows():
        truth = centres.get((study_id, "L3/L4"))
        if truth is None or series_id not in geometries:
            continue
        geometry = geometries[series_id]
        centre, lateral = _vec(truth, "", suffix="_mm"), _vec(truth, "lateral_")
        # true offset of each slice plane from the centre, along the true lateral axis
        normals = geometry.normals
        true_offsets = -geometry.distances(centre) / (normals @ lateral)
        sides = np.array(sagittal_sides(geometry, centre, tolerance_mm=0.0))
        clear = np.abs(true_offsets) > 0.5
        expected = np.where(true_offsets > 0, "left", "right")
        ok = sides[clear] == expected[clear]
        slices += int(clear.sum())
        correct += int(ok.sum())
        series_all_correct += bool(ok.all())
        choice = select_sagittal_slices(geometry, centre, foramen_offset_mm)
        left_true = true_offsets[geometry.index_of(choice["left"])]
        right_true = true_offsets[geometry.index_of(choice["right"])]
        picks += 1
        picks_correct += bool(left_true > 0 and right_true < 0)
    return {"sagittal_series": picks, "sagittal_slices_checked": slices,
            "sagittal_side_accuracy": correct / max(slices, 1),
            "sagittal_series_all_sides_correct": series_all_correct / max(picks, 1),
            "foramen_slice_side_accuracy": picks_correct / max(picks, 1)}


def evaluate_axial_xref(xref: pl.DataFrame, geometries: dict[int, StackGeometry],
                        level_centers: pl.DataFrame) -> dict[str, Any]:
    """Chosen axial slice and in-plane point against the true level centre."""
    centres = _centres(level_centers)
    nearest, within_one, errors_px = [], [], []
    for r in xref.iter_rows(named=True):
        truth = centres[(r["study_id"], r["level"])]
        centre = _vec(truth, "", suffix="_mm")
        geometry = geometries[r["series_id"]]
        distances = np.abs(geometry.distances(centre))
        best = float(distances.min())
        chosen = r["slice_index"]
        nearest.append(distances[chosen] - best <= TIE_MM)
        best_indices = np.flatnonzero(distances - best <= TIE_MM)
        within_one.append(bool(np.min(np.abs(best_indices - chosen)) <= 1))
        x, y = geometry.to_pixel(chosen, centre)
        errors_px.append(float(np.hypot(x - r["x"], y - r["y"])))
    errors = np.array(errors_px) if errors_px else np.array([np.nan])
    return {"axial_pairs": len(nearest),
            "axial_nearest_slice_rate": float(np.mean(nearest)) if nearest else None,
            "axial_within_one_slice_rate": float(np.mean(within_one)) if within_one else None,
            "inplane_error_px_median": float(np.median(errors)),
            "inplane_error_px_p95": float(np.percentile(errors, 95)),
            "inplane_error_px_max": float(errors.max())}


LEVEL_POINT_CONDITIONS = ("spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                          "right_neural_foraminal_narrowing")


def noisy_annotation_keys(quirks: pl.DataFrame) -> set[tuple[int, str]]:
    """(study, level) pairs whose level point rests on a deliberately displaced annotation
    (quirk coordinate_off on the canal or a foramen)."""
    off = quirks.filter(pl.col("quirk").str.starts_with("coordinate_off:"))
    keys = set()
    for study_id, quirk in off.select("study_id", "quirk").iter_rows():
        _, condition, level = quirk.split(":")
        if condition in LEVEL_POINT_CONDITIONS:
            keys.add((study_id, level.upper().replace("_", "/")))
    return keys


def evaluate_geometry(series: pl.DataFrame, geometries: dict[int, StackGeometry],
                      xref: pl.DataFrame, level_centers: pl.DataFrame, quirks: pl.DataFrame,
                      foramen_offset_mm: float) -> dict[str, Any]:
    noisy = noisy_annotation_keys(quirks)
    is_noisy = pl.struct("study_id", "level").map_elements(
        lambda s: (s["study_id"], s["level"]) in noisy, return_dtype=pl.Boolean)
    xref = xref.with_columns(noisy=is_noisy) if xref.height else xref.with_columns(
        noisy=pl.lit(False))
    result = {"sides": evaluate_sagittal_sides(series, geometries, level_centers, foramen_offset_mm),
              "axial_clean_annotations": evaluate_axial_xref(
                  xref.filter(~pl.col("noisy")), geometries, level_centers),
              "axial_all_annotations": evaluate_axial_xref(xref, geometries, level_centers)}
    log.info("geometry against ground truth: %s", result)
    return result
