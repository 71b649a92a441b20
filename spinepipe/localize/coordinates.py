"""coordinates.parquet: annotated and predicted coordinates, and the label-noise report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from spinepipe.geometry import StackGeometry
from spinepipe.xref import annotation_points, stack_geometries

COORDINATE_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                     "condition": pl.String, "level": pl.String, "side": pl.String,
                     "instance_number": pl.Int64, "x": pl.Float64, "y": pl.Float64,
                     "source": pl.String, "confidence": pl.Float64, "spread_px": pl.Float64}


def merge_coordinates(annotated: pl.DataFrame, predicted_train: pl.DataFrame,
                      instances: pl.DataFrame, series: pl.DataFrame,
                      threshold_mm: float, action: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The train studies' coordinates (annotated, predicted where none) and the label-noise
    table. Test studies' coordinates are their predictions alone (:func:`predicted_coordinates`),
    kept apart so a new test study changes nothing the severity models train on.

    An annotation farther than ``threshold_mm`` from its out-of-fold prediction (in the plane
    of the annotated slice) is reported; ``action`` keeps it, replaces it by the
    prediction, or drops it.
    """
    noise = localization_errors(annotated, predicted_train, stack_geometries(instances, series)).with_columns(
        noisy=pl.col("distance_mm") > threshold_mm)
    noisy_keys = noise.filter(pl.col("noisy")).select("study_id", "condition", "level")

    side = pl.when(pl.col("condition").str.starts_with("Left")).then(pl.lit("left")).when(
        pl.col("condition").str.starts_with("Right")).then(pl.lit("right")).otherwise(pl.lit("center"))
    descriptions = series.select("series_id", "series_description")
    ann = annotated.join(descriptions, on="series_id", how="left").with_columns(
        side=side, source=pl.lit("annotated"), confidence=pl.lit(1.0), spread_px=pl.lit(0.0))
    if action in ("replace", "drop"):
        ann = ann.join(noisy_keys, on=["study_id", "condition", "level"], how="anti")
    pred_cols = predicted_coordinates(predicted_train)
    # predictions fill every (study, condition, level) the annotations do not cover
    fill = pred_cols.join(ann.select("study_id", "condition", "level"),
                          on=["study_id", "condition", "level"], how="anti")
    if action == "drop":
        fill = fill.join(noisy_keys, on=["study_id", "condition", "level"], how="anti")
    columns = list(COORDINATE_SCHEMA)
    merged = pl.concat([ann.select(columns), fill.select(columns)])
    return merged.sort("study_id", "condition", "level"), noise


ERROR_SCHEMA = {"study_id": pl.Int64, "condition": pl.String, "level": pl.String,
                "series_id": pl.Int64, "distance_mm": pl.Float64, "dx_mm": pl.Float64,
                "dy_mm": pl.Float64, "extent_mm": pl.Float64, "slice_offset": pl.Int64}


def localization_errors(annotated: pl.DataFrame, predicted_train: pl.DataFrame,
                        geometries: dict[int, StackGeometry]) -> pl.DataFrame:
    """Each annotation against its out-of-fold prediction, in the plane of the annotated
    slice: distance and its column / row parts (mm), the slice's smaller extent (mm), and
    the predicted slice minus the annotated one (null when the prediction is on another
    series). A prediction on a neighbouring slice is not a disagreement about where the
    structure is, so the in-plane part and the slice part are kept apart."""
    pred_points = annotation_points(predicted_train.select(
        "study_id", "series_id", "instance_number", "condition", "level", "x", "y"), geometries)
    predicted_at = {(r["study_id"], r["condition"], r["level"]): np.array([r["px"], r["py"], r["pz"]])
                    for r in pred_points.iter_rows(named=True)}
    predicted_slice = {(r["study_id"], r["condition"], r["level"]): (r["series_id"], r["slice_index"])
                       for r in predicted_train.iter_rows(named=True)}
    rows = []
    for r in annotated.iter_rows(named=True):
        key = (r["study_id"], r["condition"], r["level"])
        predicted = predicted_at.get(key)
        geometry = geometries.get(r["series_id"])
        if predicted is None or geometry is None:
            continue
        try:
            index = geometry.index_of(r["instance_number"])
        except KeyError:
            continue
        plane = geometry.plane(index)
        x, y, _ = plane.to_pixel(predicted)
        dx, dy = (x - r["x"]) * plane.pixel_spacing[1], (y - r["y"]) * plane.pixel_spacing[0]
        extent = min(geometry.rows[index] * plane.pixel_spacing[0],
                     geometry.columns[index] * plane.pixel_spacing[1])
        series_id, slice_index = predicted_slice[key]
        rows.append({"study_id": r["study_id"], "condition": r["condition"], "level": r["level"],
                     "series_id": r["series_id"], "distance_mm": float(np.hypot(dx, dy)),
                     "dx_mm": float(dx), "dy_mm": float(dy), "extent_mm": float(extent),
                     "slice_offset": int(slice_index) - index if series_id == r["series_id"] else None})
    return pl.DataFrame(rows, schema=ERROR_SCHEMA)


ERROR_QUANTILES = (0.5, 0.75, 0.8, 0.9, 0.95, 0.99)
ERROR_FAMILIES = {"spinal": "Spinal", "foraminal": "Foraminal", "subarticular": "Subarticular"}


def error_summary(errors: pl.DataFrame) -> dict[str, dict]:
    """Quantiles of the out-of-fold localization error per condition family
    (``oof_error.json``): the training jitter (``train.point_jitter: auto``) is read off it.
    ``axis_mm`` pools the absolute column and row errors, ``axis_share`` the same as shares
    of the slice's extent (for crops sized as a share of the image), ``slice`` the absolute
    slice offsets."""
    def quantiles(values: np.ndarray) -> dict[str, float] | None:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        return {f"q{round(q * 100)}": float(np.quantile(values, q)) for q in ERROR_QUANTILES}

    summary: dict[str, dict] = {}
    for family, word in ERROR_FAMILIES.items():
        rows = errors.filter(pl.col("condition").str.contains(word))
        axis = np.abs(np.concatenate([rows["dx_mm"].to_numpy(), rows["dy_mm"].to_numpy()]))
        extent = np.concatenate([rows["extent_mm"].to_numpy()] * 2)
        summary[family] = {
            "n": rows.height,
            "distance_mm": quantiles(rows["distance_mm"].to_numpy()),
            "axis_mm": quantiles(axis),
            "axis_share": quantiles(axis / extent) if rows.height else None,
            "slice": quantiles(np.abs(rows["slice_offset"].drop_nulls().to_numpy().astype(float))),
            "beyond_15mm": float((rows["distance_mm"] > 15).mean()) if rows.height else None,
        }
    return summary


def predicted_coordinates(predictions: pl.DataFrame) -> pl.DataFrame:
    """Predicted points (``predictions_{split}.parquet``) in the schema of
    coordinates.parquet, source ``predicted``. For the train split these are the out-of-fold
    points the end-to-end CV cuts its crops at (``coordinates_train_predicted.parquet``):
    every train study located as a test study is, annotations ignored."""
    return predictions.with_columns(source=pl.lit("predicted")).select(
        [pl.col(c).cast(t) for c, t in COORDINATE_SCHEMA.items()])


def plot_label_noise(noise: pl.DataFrame, threshold_mm: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = noise["distance_mm"].to_numpy()
    ax.hist(values, bins=np.linspace(0, max(20.0, float(values.max()) if values.size else 20.0), 41))
    ax.axvline(threshold_mm, color="red", linestyle="--", label=f"threshold {threshold_mm} mm")
    ax.set_xlabel("annotation to out-of-fold prediction, in the annotated slice (mm)")
    ax.set_ylabel("annotations")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
