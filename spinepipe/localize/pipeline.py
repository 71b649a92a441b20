"""Stage functions of the localization rules: train one fold model, localize a split,
merge annotated and predicted coordinates, report label noise, evaluate against truth."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from spinepipe.geometry import StackGeometry
from spinepipe.localize.inference import StudyLocalizer, load_models, localize_split
from spinepipe.localize.samples import POINTS_PER_TASK, SLICE_TARGETS, point_samples, slice_samples
from spinepipe.localize.stacks import StackCache
from spinepipe.localize.training import save_checkpoint, train_point_model, train_slice_model
from spinepipe.tracking import mlflow_run
from spinepipe.xref import annotation_points, slice_reader, stack_geometries

log = logging.getLogger(__name__)


def train_fold(kind: str, task: str, fold: int, *, coordinates: pl.DataFrame, stack_index: pl.DataFrame,
               series: pl.DataFrame, xref: pl.DataFrame, folds: pl.DataFrame, cfg: dict[str, Any],
               tracking: dict[str, Any], out: Path, threads: int) -> dict[str, float]:
    """Train the ``kind`` model of ``task`` on every fold but ``fold``; validate on ``fold``."""
    torch.set_num_threads(max(threads, 1))
    cache = StackCache(stack_index)
    held_out = set(folds.filter(pl.col("fold") == fold)["study_id"].to_list())
    model_cfg = cfg[f"{kind}_model"] | {"seed": cfg["seed"] + fold}
    if kind == "point":
        samples = point_samples(task, coordinates, cache, series, xref, cfg["axial_crop"],
                                neighbours=cfg["neighbours"])
        train = [s for s in samples if s.study_id not in held_out]
        val = [s for s in samples if s.study_id in held_out and s.meta.get("offset", 0) == 0]
    else:
        samples = slice_samples(task, coordinates, cache, cfg["slice_image_size"])
        train = [s for s in samples if s.study_id not in held_out]
        val = [s for s in samples if s.study_id in held_out]
    log.info("%s %s fold %d: %d training and %d validation samples", kind, task, fold,
             len(train), len(val))
    params = {"kind": kind, "task": task, "fold": fold, "n_train": len(train), "n_val": len(val),
              **{f"model.{k}": v for k, v in model_cfg.items()}}
    with mlflow_run(tracking, f"localize-{kind}-{task}-fold{fold}", params,
                    tags={"stage": "localize", "kind": kind, "task": task, "fold": str(fold)}) as log_metrics:
        if kind == "point":
            model, metrics = train_point_model(train, val, POINTS_PER_TASK[task], model_cfg, log_metrics)
        else:
            model, metrics = train_slice_model(train, val, SLICE_TARGETS[task], model_cfg, log_metrics)
    save_checkpoint(model, out, {"backbone": model_cfg["backbone"], "kind": kind, "task": task,
                                 "fold": fold, "metrics": metrics})
    return metrics


def localize(split: str, *, checkpoints: list[Path], stack_index: pl.DataFrame,
             instances: pl.DataFrame, series: pl.DataFrame, folds: pl.DataFrame | None,
             cfg: dict[str, Any], threads: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Predictions for every study of a split: out-of-fold for train, all folds for test."""
    torch.set_num_threads(max(threads, 1))
    cache = StackCache(stack_index)
    geometries = stack_geometries(instances, series)
    reader = slice_reader(instances)
    by_fold: dict[int, dict[str, list[Path]]] = {}
    for path in checkpoints:
        meta = torch.load(path, map_location="cpu", weights_only=False)["meta"]
        by_fold.setdefault(meta["fold"], {}).setdefault(f"{meta['kind']}_{meta['task']}", []).append(path)
    all_paths: dict[str, list[Path]] = {}
    for paths in by_fold.values():
        for key, items in paths.items():
            all_paths.setdefault(key, []).extend(items)
    localizers = {"all": StudyLocalizer(load_models(all_paths), cache, geometries, reader, cfg)}
    fold_of: dict[int, int] = {}
    if split == "train" and folds is not None:
        fold_of = dict(folds.select("study_id", "fold").iter_rows())
        for fold, paths in by_fold.items():
            localizers[fold] = StudyLocalizer(load_models(paths), cache, geometries, reader, cfg)
    studies = sorted(series["study_id"].unique().to_list())
    return localize_split(studies, series,
                          lambda sid: localizers[fold_of[sid]] if sid in fold_of else localizers["all"])


COORDINATE_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String,
                     "condition": pl.String, "level": pl.String, "side": pl.String,
                     "instance_number": pl.Int64, "x": pl.Float64, "y": pl.Float64,
                     "source": pl.String, "confidence": pl.Float64, "spread_px": pl.Float64}


def merge_coordinates(annotated: pl.DataFrame, predicted_train: pl.DataFrame,
                      predicted_test: pl.DataFrame, instances: pl.DataFrame, series: pl.DataFrame,
                      threshold_mm: float, action: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """coordinates.parquet and the label-noise table.

    An annotation farther than ``threshold_mm`` (3D) from its out-of-fold prediction is
    reported; ``action`` keeps it, replaces it by the prediction, or drops it.
    """
    geometries = stack_geometries(instances, series)
    ann_points = annotation_points(annotated, geometries)
    pred = predicted_train
    pred_points = annotation_points(pred.select("study_id", "series_id", "instance_number",
                                                "condition", "level", "x", "y"), geometries)
    joined = ann_points.join(pred_points, on=["study_id", "condition", "level"], suffix="_pred")
    distance = np.sqrt((joined["px"] - joined["px_pred"]) ** 2 + (joined["py"] - joined["py_pred"]) ** 2
                       + (joined["pz"] - joined["pz_pred"]) ** 2)
    noise = joined.select("study_id", "condition", "level", "series_id").with_columns(
        distance_mm=distance).with_columns(noisy=pl.col("distance_mm") > threshold_mm)
    noisy_keys = noise.filter(pl.col("noisy")).select("study_id", "condition", "level")

    side = pl.when(pl.col("condition").str.starts_with("Left")).then(pl.lit("left")).when(
        pl.col("condition").str.starts_with("Right")).then(pl.lit("right")).otherwise(pl.lit("center"))
    descriptions = series.select("series_id", "series_description")
    ann = annotated.join(descriptions, on="series_id", how="left").with_columns(
        side=side, source=pl.lit("annotated"), confidence=pl.lit(1.0), spread_px=pl.lit(0.0))
    if action in ("replace", "drop"):
        ann = ann.join(noisy_keys, on=["study_id", "condition", "level"], how="anti")
    pred_cols = pred.with_columns(source=pl.lit("predicted"))
    # predictions fill every (study, condition, level) the annotations do not cover
    fill = pred_cols.join(ann.select("study_id", "condition", "level"),
                          on=["study_id", "condition", "level"], how="anti")
    if action == "drop":
        fill = fill.join(noisy_keys, on=["study_id", "condition", "level"], how="anti")
    test = predicted_test.with_columns(source=pl.lit("predicted"))
    columns = list(COORDINATE_SCHEMA)
    merged = pl.concat([ann.select(columns), fill.select(columns), test.select(columns)])
    return merged.sort("study_id", "condition", "level"), noise


def plot_label_noise(noise: pl.DataFrame, threshold_mm: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = noise["distance_mm"].to_numpy()
    ax.hist(values, bins=np.linspace(0, max(20.0, float(values.max()) if values.size else 20.0), 41))
    ax.axvline(threshold_mm, color="red", linestyle="--", label=f"threshold {threshold_mm} mm")
    ax.set_xlabel("annotation to out-of-fold prediction (mm)")
    ax.set_ylabel("annotations")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
