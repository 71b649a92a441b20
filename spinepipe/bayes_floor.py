"""The Bayes floor of the competition metric: the expected score of the best prediction made
from the true severities, when the labels are a reader's noisy calls on them.

Given ``P(grade | true severity)`` for every labelled row (the synthetic generator knows it,
``grade_probabilities.csv``), the labels are independent draws from those probabilities. The
prediction of an oracle that knows them is :func:`oracle_predictions`: the probabilities
reweighted by the metric's class weights, ``q_k ~ w_k p_k``, which is what minimises a
class-weighted log loss (and what the class-weighted training loss aims at); predicting ``p``
itself scores worse. The floor is that oracle's expected score, computed exactly: each term
of the metric is a ratio ``sum_i w(y_i) loss_i(y_i) / sum_i w(y_i)`` of sums over independent
rows, whose expectation :func:`expected_weighted_loss` gets by dynamic programming over the
(integer) value of the denominator. A score is then placed between the prior (the ceiling)
and the floor by :func:`gap_closed`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from spinepipe.constants import SUBMISSION_COLUMNS
from spinepipe.metric import (
    ANY_SEVERE_KEY,
    ANY_SEVERE_WEIGHTS,
    EPS,
    GROUPS,
    SEVERITY_WEIGHTS,
    labels_to_long,
)

#: Columns of ``P(grade | true severity)``, in ``SEVERITIES`` order.
PROBABILITY_COLUMNS: tuple[str, str, str] = ("p_normal_mild", "p_moderate", "p_severe")


def _integer_weights(weights: tuple[float, ...] | list[float]) -> np.ndarray:
    as_int = np.asarray(weights, dtype=np.int64)
    if not np.allclose(as_int, weights) or np.any(as_int < 1):
        raise ValueError(f"the exact expectation needs positive integer weights, got {weights}")
    return as_int


def oracle_predictions(probabilities: np.ndarray) -> np.ndarray:
    """``q_k ~ w_k p_k`` per row: the prediction that minimises the expected class-weighted
    log loss when the label is drawn from ``p``."""
    weights = np.array([SEVERITY_WEIGHTS[k] for k in range(probabilities.shape[1])])
    weighted = probabilities * weights
    return weighted / weighted.sum(axis=1, keepdims=True)


def expected_weighted_loss(probabilities: np.ndarray, losses: np.ndarray,
                           weights: np.ndarray) -> float:
    """``E[sum_i w(y_i) L_i(y_i) / sum_i w(y_i)]`` for independent labels ``y_i`` with
    ``P(y_i = k) = probabilities[i, k]``, losses ``losses[i, k]`` and integer class weights.

    ``mass[d]`` is ``P(denominator = d)`` and ``total[d]`` is ``E[numerator; denominator =
    d]`` over the rows seen so far; each row moves both by its class weight.
    """
    n, _ = probabilities.shape
    if n == 0:
        return float("nan")
    size = int(weights.max()) * n + 1
    mass, total = np.zeros(size), np.zeros(size)
    mass[0] = 1.0
    for p, loss in zip(probabilities, losses):
        new_mass, new_total = np.zeros(size), np.zeros(size)
        for k, w in enumerate(weights):
            if p[k] == 0.0:
                continue
            new_mass[w:] += p[k] * mass[:-w]
            new_total[w:] += p[k] * (total[:-w] + w * loss[k] * mass[:-w])
        mass, total = new_mass, new_total
    return float(np.sum(total[1:] / np.arange(1, size)))


def _log_losses(predictions: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(predictions, EPS, 1.0 - EPS))


def expected_score(rows: pl.DataFrame, predictions: np.ndarray | None = None) -> dict[str, float]:
    """The expected competition metric of ``predictions`` (default: the oracle's) over label
    draws from ``P(grade | true severity)``.

    ``rows``: the labelled rows only, with ``study_id``, ``group`` (condition family) and
    :data:`PROBABILITY_COLUMNS`; ``predictions``: one row of three probabilities per row of
    ``rows`` (normalised here, as the metric does). Returns the four terms and ``score``, their
    mean, as :func:`spinepipe.metric.score` does (a term without rows is NaN and left out).
    """
    probs = rows.select(PROBABILITY_COLUMNS).to_numpy().astype(np.float64)
    preds = oracle_predictions(probs) if predictions is None else np.asarray(predictions, np.float64)
    preds = preds / preds.sum(axis=1, keepdims=True)
    group = rows["group"].to_numpy()
    class_weights = _integer_weights([SEVERITY_WEIGHTS[k] for k in range(3)])
    result = {g: expected_weighted_loss(probs[group == g], _log_losses(preds[group == g]),
                                        class_weights) for g in GROUPS}
    result[ANY_SEVERE_KEY] = _expected_any_severe(rows, probs, preds)
    terms = [v for v in result.values() if not np.isnan(v)]
    result["score"] = float(np.mean(terms)) if terms else float("nan")
    return result


def _expected_any_severe(rows: pl.DataFrame, probs: np.ndarray, preds: np.ndarray) -> float:
    """The any_severe_spinal term: per study, label 1 when any labelled spinal level is read
    Severe (independent levels), prediction the largest normalised severe probability."""
    spinal = pl.DataFrame({"study_id": rows["study_id"], "group": rows["group"],
                           "p": probs[:, 2], "q": preds[:, 2]}).filter(pl.col("group") == "spinal")
    if spinal.height == 0:
        return float("nan")
    per_study = spinal.group_by("study_id", maintain_order=True).agg(
        (1.0 - (1.0 - pl.col("p")).product()).alias("p_any"), pl.col("q").max().alias("q_max"))
    p_any = per_study["p_any"].to_numpy()
    q_max = np.clip(per_study["q_max"].to_numpy(), EPS, 1.0 - EPS)
    probabilities = np.column_stack([1.0 - p_any, p_any])
    losses = np.column_stack([-np.log(1.0 - q_max), -np.log(q_max)])
    return expected_weighted_loss(probabilities, losses, _integer_weights(list(ANY_SEVERE_WEIGHTS)))


def labelled_rows(truth: pl.DataFrame, long_labels: pl.DataFrame) -> pl.DataFrame:
    """The truth rows (``grade_probabilities.csv``: ``study_id``, ``condition``, ``level``,
    the probabilities) of the labelled rows of ``long_labels`` (``metric.labels_to_long``):
    a missing label is no row of the metric, so no row of the floor.

    Raises:
        ValueError: if a labelled row has no truth row.
    """
    labelled = long_labels.filter(pl.col("target").is_not_null()).select(
        "row_id", "study_id", "condition", "level", "group")
    joined = labelled.join(truth.select("study_id", "condition", "level", *PROBABILITY_COLUMNS),
                           on=["study_id", "condition", "level"], how="left", maintain_order="left")
    absent = joined.filter(pl.col(PROBABILITY_COLUMNS[0]).is_null())
    if absent.height:
        raise ValueError(f"{absent.height} labelled row(s) without a true severity, e.g. "
                         f"{absent['row_id'].head(3).to_list()}")
    return joined


def gap_closed(score: float, prior: float, floor: float) -> float:
    """The share of the distance from the prior (0) to the floor (1) that ``score`` covers."""
    return float((prior - score) / (prior - floor)) if prior != floor else float("nan")


def oracle_submission(rows: pl.DataFrame) -> pl.DataFrame:
    """The oracle's predictions as a submission table (``row_id`` and the three columns)."""
    preds = oracle_predictions(rows.select(PROBABILITY_COLUMNS).to_numpy().astype(np.float64))
    return pl.DataFrame({"row_id": rows["row_id"],
                         **{c: preds[:, i] for i, c in enumerate(SUBMISSION_COLUMNS)}})


def placement(truth: pl.DataFrame, labels: pl.DataFrame, score: float, prior: float,
              prefix: str = "") -> dict[str, object]:
    """A split's floor (``truth``: its rows of ``grade_probabilities.csv``; ``labels``: its wide
    labels) and where ``score`` lies between ``prior`` and it, as cv.json records them
    (``{prefix}floor_score``, ``{prefix}floor_terms``, ``{prefix}gap_closed``)."""
    floor = expected_score(labelled_rows(truth, labels_to_long(labels)))
    return {f"{prefix}floor_score": floor["score"],
            f"{prefix}floor_terms": {k: v for k, v in floor.items() if k != "score"},
            f"{prefix}gap_closed": gap_closed(score, prior, floor["score"])}
