"""Out-of-fold evaluation: temperature scaling, the competition metric overall, per condition
and per level, against the prior; the per-family models against the all-series model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from spinepipe.classify.fold_model import LOGITS
from spinepipe.classify.plots import confusion, plot_calibration, plot_confusions
from spinepipe.constants import CONDITIONS, LEVELS, SUBMISSION_COLUMNS
from spinepipe.metric import labels_to_long, prior_predictions, score, weighted_log_loss

log = logging.getLogger(__name__)



def fit_temperature(logits: np.ndarray, targets: np.ndarray, class_weights: np.ndarray) -> float:
    """The temperature minimising the metric's weighted log loss of softmax(logits / T)."""
    known = targets >= 0
    if known.sum() < 10:
        return 1.0
    def loss(log_t: float) -> float:
        probs = softmax(logits[known] / np.exp(log_t), axis=-1)
        return weighted_log_loss(targets[known], probs, class_weights)

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def to_probabilities(predictions: pl.DataFrame, temperatures: dict[str, float]) -> pl.DataFrame:
    """row_id plus the three probabilities, each family's logits divided by its temperature."""
    logits = predictions.select(LOGITS).to_numpy()
    t = np.array([temperatures.get(f, 1.0) for f in predictions["family"].to_list()])[:, None]
    probs = softmax(logits / t, axis=-1)
    return predictions.select("row_id", "family", "fold", "views_ok", "views").with_columns(
        *[pl.Series(c, probs[:, k]) for k, c in enumerate(SUBMISSION_COLUMNS)])


def fit_temperatures(predictions: pl.DataFrame, labels: pl.DataFrame,
                     class_weights: np.ndarray) -> dict[str, float]:
    truth = labels_to_long(labels).select("row_id", "target")
    joined = predictions.join(truth, on="row_id", how="left")
    temperatures = {}
    for (family,), frame in joined.group_by("family"):
        targets = frame["target"].fill_null(-1).cast(pl.Int64).to_numpy()
        temperatures[family] = fit_temperature(frame.select(LOGITS).to_numpy(), targets, class_weights)
    return temperatures


def _labelled(probs: pl.DataFrame, labels: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Labelled rows joined to their probabilities: the rows, probabilities (N, 3), targets."""
    truth = labels_to_long(labels).filter(pl.col("target").is_not_null())
    joined = truth.join(probs, on="row_id", how="inner")
    return (joined, joined.select(list(SUBMISSION_COLUMNS)).to_numpy(),
            joined["target"].cast(pl.Int64).to_numpy())


def breakdown(probs: pl.DataFrame, labels: pl.DataFrame, class_weights: np.ndarray) -> dict[str, Any]:
    """``per_condition`` and ``per_level``: the weighted log loss of the labelled rows."""
    joined, p, t = _labelled(probs, labels)
    out: dict[str, Any] = {"per_condition": {}, "per_level": {}}
    for condition in CONDITIONS:
        sel = (joined["condition"] == condition).to_numpy()
        if sel.any():
            out["per_condition"][condition] = weighted_log_loss(t[sel], p[sel], class_weights)
    for level in LEVELS:
        sel = (joined["level"] == level).to_numpy()
        if sel.any():
            out["per_level"][level] = weighted_log_loss(t[sel], p[sel], class_weights)
    return out


def evaluate_oof(predictions: pl.DataFrame, labels: pl.DataFrame, class_weights: np.ndarray,
                 temperature_scaling: bool, figures: Path | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """cv.json content and the fitted temperatures.

    ``predictions``: the out-of-fold logits of every family model and fold. The submission's
    models are the per-family ones; the all-series model (family ``all``), when present, is
    scored on the same folds for comparison only.
    """
    family_preds = predictions.filter(pl.col("family") != "all")
    temperatures = (fit_temperatures(predictions, labels, class_weights) if temperature_scaling
                    else {f: 1.0 for f in predictions["family"].unique().to_list()})
    probs = to_probabilities(family_preds, temperatures)
    raw = to_probabilities(family_preds, {})
    studies = family_preds["study_id"].unique().to_list()
    scored_labels = labels.filter(pl.col("study_id").is_in(studies))
    calibrated = score(scored_labels, probs)
    uncalibrated = score(scored_labels, raw)
    prior = score(scored_labels, prior_predictions(labels, probs["row_id"].to_list()))
    result: dict[str, Any] = {
        "cv_score": calibrated["score"], "prior_score": prior["score"],
        "cv_terms": {k: v for k, v in calibrated.items() if k != "score"},
        "prior_terms": {k: v for k, v in prior.items() if k != "score"},
        "cv_score_uncalibrated": uncalibrated["score"], "temperatures": temperatures,
        "n_studies": len(studies), "n_rows": probs.height,
        **breakdown(probs, scored_labels, class_weights)}
    all_series = predictions.filter(pl.col("family") == "all")
    if all_series.height:
        all_probs = to_probabilities(all_series, temperatures)
        result["models"] = {"per_family": calibrated["score"],
                            "all_series": score(scored_labels, all_probs)["score"],
                            "per_family_uncalibrated": uncalibrated["score"],
                            "all_series_uncalibrated": score(scored_labels, to_probabilities(all_series, {}))["score"]}
    if figures is not None:
        plot_evaluation(probs, scored_labels, figures)
    return result, temperatures


def plot_evaluation(probs: pl.DataFrame, labels: pl.DataFrame, figures: Path) -> None:
    """confusion_matrices.png (one per condition) and calibration.png of ``probs``
    (``row_id`` and the three probabilities) against the labelled rows."""
    figures.mkdir(parents=True, exist_ok=True)
    joined, p, t = _labelled(probs, labels)
    matrices = {c: confusion(t[sel], p[sel].argmax(-1)) for c in CONDITIONS
                if (sel := (joined["condition"] == c).to_numpy()).any()}
    plot_confusions(matrices, figures / "confusion_matrices.png")
    plot_calibration(p, t, figures / "calibration.png")
