"""Train studies graded by the fold model that held them out, and the check that no row was
graded by a model that learnt from its study (``LeakError``): the prediction half of the
end-to-end out-of-fold evaluation (:mod:`spinepipe.classify.end_to_end`), run by rule
predict_oof."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from spinepipe import checkpoints
from spinepipe.classify.inference import predict_family

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class LeakError(ValueError):
    """A train study graded by a model that learnt from it."""


def held_out_studies(folds: pl.DataFrame, fold: int) -> list[int]:
    """The train studies fold ``fold`` held out (its models never trained on them)."""
    return sorted(folds.filter(pl.col("fold") == fold)["study_id"].to_list())


def predict_held_out(model_path: Path, index: pl.DataFrame, folds: pl.DataFrame, fold: int,
                     tta: bool, batch_size: int, device: torch.device | str = "cpu") -> pl.DataFrame:
    """Logits of the fold-``fold`` model (``predict_family``'s format) for exactly the studies
    that fold held out, from ``index`` (the ``train_predicted`` crops); checked with
    ``check_no_leak`` against the folds and the training studies the model file records."""
    meta = checkpoints.load(model_path)["meta"]
    if meta["fold"] != fold:
        raise LeakError(f"{model_path} is the model of fold {meta['fold']}, not of fold {fold}")
    studies = held_out_studies(folds, fold)
    predictions = predict_family(model_path, index.filter(pl.col("study_id").is_in(studies)), tta,
                                 batch_size, device)
    check_no_leak(predictions, folds, {(meta["family"], fold): meta.get("train_studies")})
    log.info("%s fold %d: %d rows of %d held-out studies", meta["family"], fold, predictions.height,
             predictions["study_id"].n_unique())
    return predictions


def check_no_leak(predictions: pl.DataFrame, folds: pl.DataFrame,
                  train_studies: Mapping[tuple[str, int], list[int] | None] | None = None) -> None:
    """Raise ``LeakError`` unless every row of ``predictions`` (``row_id``, ``study_id`` and the
    grading model's ``family`` and ``fold``) was graded by the model of the fold that held its
    study out (``folds``: study_id, fold), by that one model only (per family), and, where the
    models' training studies are known (``(family, fold)`` -> study ids, from the model files),
    by a model that did not learn from the study."""
    keyed = predictions.select(
        "row_id", "study_id", "family", "fold",
        row_study=pl.col("row_id").str.split("_").list.first().cast(pl.Int64, strict=False))
    mismatched = keyed.filter(pl.col("row_study").is_null() | (pl.col("row_study") != pl.col("study_id")))
    if mismatched.height:
        raise LeakError(f"{mismatched.height} row(s) whose row_id names another study than their "
                        f"study_id, e.g. {mismatched['row_id'].head(3).to_list()}")
    joined = keyed.join(folds.select("study_id", pl.col("fold").alias("held_out_by")), on="study_id",
                        how="left")
    unknown = joined.filter(pl.col("held_out_by").is_null())
    if unknown.height:
        raise LeakError(f"{unknown.height} row(s) of studies no fold holds out (not in folds.parquet), "
                        f"e.g. {unknown['row_id'].head(3).to_list()}")
    wrong = joined.filter(pl.col("fold") != pl.col("held_out_by"))
    if wrong.height:
        examples = [f"{r['row_id']} by the {r['family']} model of fold {r['fold']} "
                    f"(held out by fold {r['held_out_by']})" for r in wrong.head(3).iter_rows(named=True)]
        raise LeakError(f"{wrong.height} row(s) graded by a model that trained on their study: "
                        + "; ".join(examples))
    repeated = joined.filter(pl.struct("row_id", "family").is_duplicated())
    if repeated.height:
        raise LeakError(f"{repeated.height} row(s) graded more than once by one family's models, "
                        f"e.g. {repeated['row_id'].unique().head(3).to_list()}")
    for (family, fold), studies in (train_studies or {}).items():
        if studies is None:
            continue
        graded = set(joined.filter((pl.col("family") == family) & (pl.col("fold") == fold))["study_id"])
        seen = sorted(graded & set(studies))
        if seen:
            raise LeakError(f"the {family} model of fold {fold} trained on {len(seen)} of the studies "
                            f"it grades, e.g. {seen[:5]}")
