"""End-to-end out-of-fold evaluation: every train study graded as a test study is.

For a train study of fold k, the localizer models of fold k (which never saw it) predicted its
points (``predictions_train.parquet``), its crops are cut at those points only (crop split
``train_predicted``), and the severity models of fold k grade them (``predict_held_out``).
The rows are then assembled with the submission's own code (``ensemble`` and
``assemble_submission``): a row with some views missing is predicted from the other series,
a row with none (or a non-finite output) takes the prior, computed from the labels of the
other folds as a test row's comes from the training labels. The CV of that table is the
headline ``cv_score``: it measures the pipeline that runs at test time. The classifier-only
CV on annotated points (``evaluate_oof``) is reported beside it as
``cv_score_annotated_points``, so the cost of localization shows.

Temperatures: the submission's (``temperatures.json``) are fitted on these end-to-end
out-of-fold logits, over the rows the model predicts (at least one view cut): test crops are
cut at predicted points too, so these logits are distributed as the test logits are. The
annotated-point CV keeps temperatures fitted on its own logits. Both CVs fit their one
temperature per family on all their folds, the same protocol, so the difference between the
two figures is the localization (and the fallbacks it causes), not the calibration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from spinepipe.classify.evaluate import breakdown, evaluate_oof, fit_temperatures, plot_evaluation
from spinepipe.classify.held_out import check_no_leak
from spinepipe.classify.inference import assemble_submission, ensemble
from spinepipe.constants import SUBMISSION_COLUMNS
from spinepipe.metric import labels_to_long, prior_predictions, prior_table, score

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

DEGRADED_OOF_SCHEMA = {"row_id": pl.String, "fold": pl.Int64, "reason": pl.String,
                       "fallback": pl.String}


def end_to_end_predictions(predictions: pl.DataFrame, folds: pl.DataFrame, labels: pl.DataFrame,
                           temperatures: dict[str, float], crop_index: pl.DataFrame,
                           unlocalized: pl.DataFrame | None = None,
                           series: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Probabilities of every train row (every study of ``labels`` x 25, competition order:
    ``row_id``, ``fold``, the three probabilities) and the rows that needed a fallback
    (``row_id``, ``fold``, ``reason``, ``fallback``).

    Fold by fold, the held-out studies are a test set for the fold's models: their logits
    (``predictions``, ``predict_held_out``'s rows of every fold) are temperature-scaled and
    assembled by ``ensemble`` and ``assemble_submission`` as the submission's are, the prior
    of the fallbacks coming from the labels of the other folds. ``crop_index``,
    ``unlocalized`` and ``series`` give the reasons, as for the submission.
    """
    predictions = predictions.filter(pl.col("family") != "all")  # not a submission model
    check_no_leak(predictions, folds)
    rows = labels_to_long(labels).select("row_id", "study_id").join(
        folds.select("study_id", "fold"), on="study_id", how="left", maintain_order="left")
    orphans = rows.filter(pl.col("fold").is_null())["study_id"].unique().to_list()
    if orphans:
        raise ValueError(f"train studies without a fold in folds.parquet: {sorted(orphans)[:5]}")
    probs, degraded = [], []
    for fold in sorted(rows["fold"].unique().to_list()):
        held_out = rows.filter(pl.col("fold") == fold)
        others = labels.filter(~pl.col("study_id").is_in(held_out["study_id"].unique().to_list()))
        ensembled = ensemble(predictions.filter(pl.col("fold") == fold), temperatures, None)
        fold_probs, fold_degraded = assemble_submission(held_out.select("row_id"), ensembled,
                                                        prior_table(others),
                                                        crop_index, unlocalized, series)
        probs.append(fold_probs.with_columns(fold=pl.lit(fold, dtype=pl.Int64)))
        degraded.append(fold_degraded.with_columns(fold=pl.lit(fold, dtype=pl.Int64)))
    merged = rows.select("row_id").join(pl.concat(probs), on="row_id", how="left", maintain_order="left")
    return (merged.select("row_id", "fold", *SUBMISSION_COLUMNS),
            pl.concat(degraded).select(list(DEGRADED_OOF_SCHEMA)).cast(DEGRADED_OOF_SCHEMA))


def _terms(result: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in result.items() if k != "score"}


def evaluate_cv(annotated: pl.DataFrame, end_to_end: pl.DataFrame, labels: pl.DataFrame,
                folds: pl.DataFrame, crop_index: pl.DataFrame, unlocalized: pl.DataFrame | None,
                series: pl.DataFrame | None, class_weights: np.ndarray, temperature_scaling: bool,
                figures: Path | None = None
                ) -> tuple[dict[str, Any], dict[str, float], pl.DataFrame, pl.DataFrame]:
    """cv.json's content, the submission's temperatures, the end-to-end probabilities of every
    train row and its degraded rows.

    ``annotated``: out-of-fold logits on the annotated-point crops (``train_model``);
    ``end_to_end``: out-of-fold logits on the predicted-point crops (``predict_oof``).
    ``cv_score`` (with ``cv_terms``, ``per_condition``, ``per_level``) is the end-to-end CV,
    ``cv_score_annotated_points`` (with ``cv_terms_annotated_points``,
    ``per_condition_annotated_points``, ``per_level_annotated_points``) the classifier-only
    one; the figures (``figures``) show the end-to-end probabilities.
    """
    annotated_result, annotated_temperatures = evaluate_oof(annotated, labels, class_weights,
                                                            temperature_scaling)
    family_logits = end_to_end.filter(pl.col("family") != "all")
    # fitted on the rows the model predicts; rows without any view take the prior anyway
    temperatures = (fit_temperatures(family_logits.filter(pl.col("views_ok") > 0), labels, class_weights)
                    if temperature_scaling else {f: 1.0 for f in family_logits["family"].unique().to_list()})
    probs, degraded = end_to_end_predictions(family_logits, folds, labels, temperatures, crop_index,
                                             unlocalized, series)
    raw, _ = end_to_end_predictions(family_logits, folds, labels, {}, crop_index, unlocalized, series)
    calibrated, uncalibrated = score(labels, probs), score(labels, raw)
    prior = score(labels, prior_predictions(labels, probs["row_id"].to_list()))
    e2e_breakdown = breakdown(probs, labels, class_weights)
    annotated_breakdown = {k: annotated_result[k] for k in ("per_condition", "per_level")}
    fallbacks = degraded["fallback"].to_list()
    result: dict[str, Any] = {
        "cv_score": calibrated["score"], "prior_score": prior["score"],
        "cv_terms": _terms(calibrated), "prior_terms": _terms(prior),
        "cv_score_uncalibrated": uncalibrated["score"], "temperatures": temperatures,
        "n_studies": probs["row_id"].str.split("_").list.first().n_unique(), "n_rows": probs.height,
        **e2e_breakdown,
        "cv_score_annotated_points": annotated_result["cv_score"],
        "cv_terms_annotated_points": annotated_result["cv_terms"],
        **{f"{k}_annotated_points": v for k, v in annotated_breakdown.items()},
        "localization_cost": calibrated["score"] - annotated_result["cv_score"],
        "end_to_end": {"rows_degraded": degraded.height,
                       "rows_on_prior": fallbacks.count("prior"),
                       "rows_from_other_series": fallbacks.count("model (other series)"),
                       "rows_from_readable_slices": fallbacks.count("model (readable slices)")},
        "annotated_points": {k: annotated_result[k] for k in (
            "cv_score_uncalibrated", "temperatures", "prior_score", "prior_terms", "n_studies",
            "n_rows")},
    }
    if "models" in annotated_result:  # the all-series comparison, on annotated points
        result["models"] = annotated_result["models"]
    if figures is not None:
        plot_evaluation(probs, labels, figures)
    log.info("end-to-end CV %.4f (%d of %d rows on the prior), annotated points %.4f, prior %.4f",
             result["cv_score"], result["end_to_end"]["rows_on_prior"], probs.height,
             result["cv_score_annotated_points"], result["prior_score"])
    return result, temperatures, probs, degraded
