"""A severity fold model as prediction sees it: built from its checkpoint (torch) or read as
its ONNX export (onnxruntime), and its logits as prediction rows. Nothing here trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from spinepipe import checkpoints
from spinepipe.classify.data import Sample, n_outputs, n_views
from spinepipe.classify.models import SeverityModel
from spinepipe.constants import RUNTIMES, SUBMISSION_COLUMNS, split_row_id

LOGITS = [f"logit_{c}" for c in SUBMISSION_COLUMNS]
PREDICTION_SCHEMA = {"row_id": pl.String, "study_id": pl.Int64, "level": pl.String,
                     "condition": pl.String, "family": pl.String, "fold": pl.Int64,
                     "views_ok": pl.Int64, "views": pl.Int64,
                     **{column: pl.Float64 for column in LOGITS}}


def predictions_frame(samples: list[Sample], logits: np.ndarray, family: str, fold: int) -> pl.DataFrame:
    """One row per submission row a sample predicts, with its raw logits."""
    rows = []
    for sample, sample_logits in zip(samples, logits):
        ok = sum(s == "ok" for s in sample.statuses)
        for row_id, row_logits in zip(sample.row_ids, sample_logits):
            rows.append({"row_id": row_id, "study_id": sample.study_id, "level": sample.level,
                         "condition": split_row_id(row_id)[1], "family": family,
                         "fold": fold, "views_ok": ok, "views": len(sample.statuses),
                         **{f"logit_{c}": float(v) for c, v in zip(SUBMISSION_COLUMNS, row_logits)}})
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA)


def build_model(family: str, crop_cfg: dict[str, Any], cfg: dict[str, Any]) -> SeverityModel:
    slices = 2 * crop_cfg["slices"] + 1
    return SeverityModel(cfg["backbone"], n_views(family) * slices, n_outputs(family), cfg["head"],
                         cfg["hidden"], cfg["dropout"], cfg["aux_weight"] > 0, cfg["weights"] or None)


def load_model(path: Path, device: torch.device | str = "cpu",
               runtime: str = "torch") -> tuple[Any, dict[str, Any]]:
    """The fold model of checkpoint ``path`` and its meta. ``runtime`` onnx: its ONNX export
    beside it (``spinepipe.onnx_models.onnx_path``) run by onnxruntime on the CPU, called as
    the torch model is."""
    saved = checkpoints.load(path)
    meta = saved["meta"]
    if runtime == "onnx":
        from spinepipe.onnx_models import OnnxSeverityModel, onnx_path

        return OnnxSeverityModel(onnx_path(path)), meta
    if runtime != "torch":
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    model = build_model(meta["family"], meta["crops"], meta["train"] | {"weights": ""})
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), meta
