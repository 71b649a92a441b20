"""Stage function of the localizer training rule: train one fold model (prediction is
``spinepipe.localize.predict``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
import torch

from spinepipe.backbones import FROM_SCRATCH, weights_provenance
from spinepipe.devices import autocast_dtype, precision_name, resolve_device
from spinepipe.localize.samples import POINTS_PER_TASK, SLICE_TARGETS, point_samples, slice_samples
from spinepipe.localize.settings import point_epochs
from spinepipe.localize.stacks import StackCache
from spinepipe.localize.training import save_checkpoint, train_point_model, train_slice_model
from spinepipe.tracking.runs import mlflow_run
from spinepipe.xref import stack_geometries

log = logging.getLogger(__name__)


def mirrored_series(instances: pl.DataFrame, series: pl.DataFrame) -> frozenset[int]:
    """Series whose images are the mirror of the radiological view (``StackGeometry.mirrored``)."""
    return frozenset(series_id for series_id, geometry in stack_geometries(instances, series).items()
                     if geometry.mirrored)


def fold_samples(kind: str, task: str, fold: int, *, coordinates: pl.DataFrame, cache: StackCache,
                 instances: pl.DataFrame, series: pl.DataFrame, xref: pl.DataFrame, folds: pl.DataFrame,
                 cfg: dict[str, Any]) -> tuple[list, list]:
    """Training samples (every fold but ``fold``) and validation samples (``fold``; annotated
    slices only, not their neighbours) of the ``kind`` model of ``task``."""
    held_out = set(folds.filter(pl.col("fold") == fold)["study_id"].to_list())
    if kind == "point":
        samples = point_samples(task, coordinates, cache, series, xref, cfg["axial_crop"],
                                neighbours=cfg["neighbours"],
                                mirrored=mirrored_series(instances, series) if task == "axial_t2" else frozenset())
        train = [s for s in samples if s.study_id not in held_out]
        val = [s for s in samples if s.study_id in held_out and s.meta.get("offset", 0) == 0]
    else:
        samples = slice_samples(task, coordinates, cache, cfg["slice_image_size"])
        train = [s for s in samples if s.study_id not in held_out]
        val = [s for s in samples if s.study_id in held_out]
    return train, val


def train_fold(kind: str, task: str, fold: int, *, coordinates: pl.DataFrame, stack_index: pl.DataFrame,
               instances: pl.DataFrame, series: pl.DataFrame, xref: pl.DataFrame, folds: pl.DataFrame,
               cfg: dict[str, Any], tracking: dict[str, Any], out: Path, threads: int) -> dict[str, float]:
    """Train the ``kind`` model of ``task`` on every fold but ``fold``; validate on ``fold``."""
    torch.set_num_threads(max(threads, 1))
    model_cfg = model_settings(kind, task, fold, cfg)
    train, val = fold_samples(kind, task, fold, coordinates=coordinates, cache=StackCache(stack_index),
                              instances=instances, series=series, xref=xref, folds=folds, cfg=cfg)
    log.info("%s %s fold %d: %d training and %d validation samples", kind, task, fold,
             len(train), len(val))
    precision = precision_name(autocast_dtype(resolve_device(cfg["device"], "localize.device"),
                                              cfg["precision"], "localize.precision"))
    start_weights = weights_provenance(model_cfg["weights"])
    params = {"kind": kind, "task": task, "fold": fold, "n_train": len(train), "n_val": len(val),
              "resolved_precision": precision, "start_weights": start_weights or FROM_SCRATCH,
              **{f"model.{k}": v for k, v in model_cfg.items()}}
    with mlflow_run(tracking, f"localize/{kind}/{task}/fold{fold}", params,
                    tags={"stage": "localize", "kind": kind, "task": task, "fold": str(fold)}) as log_metrics:
        if kind == "point":
            model, metrics = train_point_model(train, val, POINTS_PER_TASK[task], model_cfg, log_metrics)
        else:
            model, metrics = train_slice_model(train, val, SLICE_TARGETS[task], model_cfg, log_metrics)
        # written before the run is closed: the tracking store never costs the model
        save_checkpoint(model, out, {"backbone": model_cfg["backbone"], "kind": kind, "task": task,
                                     "fold": fold, "precision": precision, "metrics": metrics,
                                     "start_weights": start_weights})
    return metrics


def model_settings(kind: str, task: str, fold: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """The training settings of one fold's ``kind`` model of ``task``: its section of
    ``localize`` with the fold's seed, the device, the settings shared by both kinds and (point
    models) the series type's epochs."""
    settings = cfg[f"{kind}_model"] | {"seed": cfg["seed"] + fold, "device": cfg["device"],
                                       "channels_last": cfg["channels_last"],
                                       "precision": cfg["precision"]}
    if kind == "point":
        settings["epochs"] = point_epochs(cfg, task)
    return settings
