"""coordinates.parquet: annotated and predicted coordinates, and the label-noise report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from spinepipe.xref import annotation_points, stack_geometries

COORDINATE_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                     "condition": pl.String, "level": pl.String, "side": pl.String,
                     "instance_number": pl.Int64, "x": pl.Float64, "y": pl.Float64,
                     "source": pl.String, "confidence": pl.Float64, "spread_px": pl.Float64}


def merge_coordinates(annotated: pl.DataFrame, predicted_train: pl.DataFrame,
                      predicted_test: pl.DataFrame, instances: pl.DataFrame, series: pl.DataFrame,
                      threshold_mm: float, action: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """coordinates.parquet and the label-noise table.

    An annotation farther than ``threshold_mm`` from its out-of-fold prediction (in the plane
    of the annotated slice) is reported; ``action`` keeps it, replaces it by the
    prediction, or drops it.
    """
    geometries = stack_geometries(instances, series)
    pred_points = annotation_points(predicted_train.select(
        "study_id", "series_id", "instance_number", "condition", "level", "x", "y"), geometries)
    predicted_at = {(r["study_id"], r["condition"], r["level"]): np.array([r["px"], r["py"], r["pz"]])
                    for r in pred_points.iter_rows(named=True)}
    # Distance in the plane of the annotated slice: a prediction on a neighbouring slice
    # is not a disagreement about where the structure is.
    rows = []
    for r in annotated.iter_rows(named=True):
        predicted = predicted_at.get((r["study_id"], r["condition"], r["level"]))
        geometry = geometries.get(r["series_id"])
        if predicted is None or geometry is None:
            continue
        try:
            plane = geometry.plane(geometry.index_of(r["instance_number"]))
        except KeyError:
            continue
        x, y, _ = plane.to_pixel(predicted)
        distance = float(np.hypot((x - r["x"]) * plane.pixel_spacing[1],
                                  (y - r["y"]) * plane.pixel_spacing[0]))
        rows.append({"study_id": r["study_id"], "condition": r["condition"], "level": r["level"],
                     "series_id": r["series_id"], "distance_mm": distance})
    noise = pl.DataFrame(rows, schema={"study_id": pl.Int64, "condition": pl.String,
                                       "level": pl.String, "series_id": pl.Int64,
                                       "distance_mm": pl.Float64}).with_columns(
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
    test = predicted_coordinates(predicted_test)
    columns = list(COORDINATE_SCHEMA)
    merged = pl.concat([ann.select(columns), fill.select(columns), test.select(columns)])
    return merged.sort("study_id", "condition", "level"), noise


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
