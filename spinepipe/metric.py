"""The RSNA 2024 Lumbar Spine competition metric, and a label-prior baseline.

The score (lower is better) is the plain mean of four losses:

* ``spinal``, ``foraminal``, ``subarticular``: for each condition group, a
  sample-weighted multiclass log loss over the rows that have a label, with
  weight 1 / 2 / 4 for a true Normal/Mild / Moderate / Severe;
* ``any_severe_spinal``: a binary log loss per study, whose label is 1 when any
  labelled spinal level is Severe and whose prediction is the max over the
  study's labelled spinal levels of the (normalised) ``severe`` probability;
  weight 6 for positive studies, 1 otherwise.

As in the competition's official metric, each row's predicted probabilities are
normalised to sum to 1 and clipped to ``[1e-15, 1 - 1e-15]`` before the log.
Rows whose label is missing are ignored; a group with no labelled rows at all
is dropped from the mean (with a warning) instead of making the score NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from spinepipe.constants import (
    CONDITION_FAMILY,
    CONDITIONS,
    FAMILIES,
    LEVELS,
    ROW_ID_PATTERN,
    SEVERITIES,
    SUBMISSION_COLUMNS,
)

__all__ = [
    "ANY_SEVERE_WEIGHTS",
    "EPS",
    "GROUPS",
    "SEVERITIES",
    "SEVERITY_WEIGHTS",
    "labels_to_long",
    "prior_predictions",
    "score",
    "weighted_log_loss",
]

log = logging.getLogger(__name__)

#: Class weights of the multiclass terms, by target index (see ``SEVERITIES``).
SEVERITY_WEIGHTS: dict[int, float] = {0: 1.0, 1: 2.0, 2: 4.0}
#: Weights of the any_severe_spinal term for a negative / positive study.
ANY_SEVERE_WEIGHTS: tuple[float, float] = (1.0, 6.0)
#: Probability clipping bound used before taking logs.
EPS: float = 1e-15
#: Condition groups of the multiclass terms, in score order.
GROUPS: tuple[str, ...] = FAMILIES
ANY_SEVERE_KEY = "any_severe_spinal"

_PRED_COLS: list[str] = list(SUBMISSION_COLUMNS)  # normal_mild, moderate, severe


def _label_columns() -> list[str]:
    return [f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS]


def labels_to_long(labels: pl.DataFrame) -> pl.DataFrame:
    """Reshape a wide labels table (like ``train.csv``) to one row per study, condition and level.

    Args:
        labels: ``study_id`` plus the 25 ``<condition>_<level>`` columns holding
            ``"Normal/Mild"``, ``"Moderate"``, ``"Severe"`` or null.

    Returns:
        Columns ``row_id`` (str, ``f"{study_id}_{condition}_{level}"``),
        ``study_id`` (Int64), ``condition``, ``level``, ``group``
        (``"spinal"``, ``"foraminal"`` or ``"subarticular"``) and ``target``
        (Int8: 0/1/2 indexing ``SEVERITIES``, null when the label is missing),
        sorted by study, then condition and level in competition order.

    Raises:
        ValueError: if ``study_id`` or a label column is absent, or a label
            holds a value other than the three severities.
    """
    cols = _label_columns()
    missing = [c for c in ["study_id", *cols] if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table lacks columns: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    wide = labels.select(
        pl.col("study_id").cast(pl.Int64),
        *[pl.col(c).cast(pl.Utf8) for c in cols],
    )
    long = wide.unpivot(index="study_id", on=cols, variable_name="column", value_name="label")

    bad = long.filter(pl.col("label").is_not_null() & ~pl.col("label").is_in(list(SEVERITIES)))
    if bad.height:
        raise ValueError(
            f"unknown severity labels: {sorted(set(bad['label'].to_list()))[:5]}; "
            f"expected one of {SEVERITIES}"
        )

    column_info = pl.DataFrame(
        {
            "column": cols,
            "condition": [c for c in CONDITIONS for _ in LEVELS],
            "level": [lv for _ in CONDITIONS for lv in LEVELS],
            "group": [CONDITION_FAMILY[c] for c in CONDITIONS for _ in LEVELS],
            "_order": list(range(len(cols))),
        }
    )
    severity_map = pl.DataFrame(
        {"label": list(SEVERITIES), "target": list(range(len(SEVERITIES)))},
        schema={"label": pl.Utf8, "target": pl.Int8},
    )
    return (
        long.join(column_info, on="column", how="left")
        .join(severity_map, on="label", how="left")
        .sort(["study_id", "_order"])
        .select(
            pl.format("{}_{}_{}", pl.col("study_id"), pl.col("condition"), pl.col("level")).alias("row_id"),
            "study_id",
            "condition",
            "level",
            "group",
            "target",
        )
    )


def _normalised_probs(frame: pl.DataFrame) -> np.ndarray:
    """Row-normalise the three probability columns of ``frame`` (no clipping)."""
    probs = frame.select(pl.col(c).cast(pl.Float64) for c in _PRED_COLS).to_numpy()
    if probs.size and not np.all(np.isfinite(probs)):
        raise ValueError("predictions contain non-finite or null probabilities")
    if probs.size and np.any(probs < 0):
        raise ValueError("predictions contain negative probabilities")
    sums = probs.sum(axis=1, keepdims=True)
    if probs.size and np.any(sums <= 0):
        raise ValueError("predictions contain rows whose probabilities sum to 0")
    return probs / sums


def weighted_log_loss(target: np.ndarray, probs: np.ndarray,
                      class_weights: np.ndarray | None = None) -> float:
    """sum_i w_i * -log(clip(p_i[target_i])) / sum_i w_i, w the weight of the true class
    (the competition's severity weights unless ``class_weights`` is given)."""
    if class_weights is None:
        class_weights = np.array([SEVERITY_WEIGHTS[k] for k in range(len(SEVERITIES))])
    p_true = np.clip(probs[np.arange(len(target)), target], EPS, 1.0 - EPS)
    weights = np.asarray(class_weights, dtype=np.float64)[target]
    return float(np.sum(weights * -np.log(p_true)) / np.sum(weights))


def _weighted_binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary log loss with weight ``ANY_SEVERE_WEIGHTS[y]`` per sample."""
    p = np.clip(p, EPS, 1.0 - EPS)
    weights = np.where(y == 1, ANY_SEVERE_WEIGHTS[1], ANY_SEVERE_WEIGHTS[0])
    losses = -(y * np.log(p) + (1 - y) * np.log(1.0 - p))
    return float(np.sum(weights * losses) / np.sum(weights))


def score(labels: pl.DataFrame, predictions: pl.DataFrame) -> dict[str, float]:
    """Compute the competition metric.

    Args:
        labels: wide labels table (like ``train.csv``), see ``labels_to_long``.
        predictions: ``row_id`` plus float columns ``normal_mild``,
            ``moderate``, ``severe`` (like ``submission.csv``). Rows need not
            sum to 1; rows not matching a labelled row are ignored.

    Returns:
        ``{"spinal", "foraminal", "subarticular", "any_severe_spinal", "score"}``;
        ``score`` is the plain mean of the other four. A term with no labelled
        rows is dropped from the mean and reported as NaN.

    Raises:
        ValueError: if a labelled row has no prediction (the first few missing
            row_ids are named), predictions repeat a row_id, hold invalid
            probabilities, or no row at all is labelled.
    """
    missing_cols = [c for c in ["row_id", *_PRED_COLS] if c not in predictions.columns]
    if missing_cols:
        raise ValueError(f"predictions table lacks columns: {missing_cols}")

    truth = labels_to_long(labels).filter(pl.col("target").is_not_null())
    preds = predictions.select(pl.col("row_id").cast(pl.Utf8), *_PRED_COLS)
    needed = preds.join(truth.select("row_id"), on="row_id", how="semi")
    if needed["row_id"].is_duplicated().any():
        dups = needed.filter(pl.col("row_id").is_duplicated())["row_id"].unique(maintain_order=True)
        raise ValueError(f"predictions repeat row_ids: {dups.head(5).to_list()}")

    merged = truth.join(
        needed.with_columns(pl.lit(True).alias("_present")), on="row_id", how="left", maintain_order="left"
    )
    absent = merged.filter(pl.col("_present").is_null())
    if absent.height:
        shown = absent["row_id"].head(5).to_list()
        raise ValueError(
            f"{absent.height} labelled row(s) missing from predictions, e.g. {shown}"
        )

    probs = _normalised_probs(merged)
    target = merged["target"].to_numpy().astype(np.int64)
    group = merged["group"].to_numpy()

    result: dict[str, float] = {}
    for g in GROUPS:
        mask = group == g
        if not mask.any():
            log.warning("no labelled rows for group %r; dropping it from the score", g)
            result[g] = float("nan")
            continue
        result[g] = weighted_log_loss(target[mask], probs[mask])

    spinal = merged.filter(pl.col("group") == "spinal").select(
        "study_id",
        (pl.col("target") == 2).cast(pl.Int8).alias("is_severe"),
        pl.Series("p_severe", probs[group == "spinal", 2]),
    )
    if spinal.height == 0:
        log.warning("no labelled spinal rows; dropping %s from the score", ANY_SEVERE_KEY)
        result[ANY_SEVERE_KEY] = float("nan")
    else:
        per_study = spinal.group_by("study_id").agg(
            pl.col("is_severe").max().alias("y"), pl.col("p_severe").max().alias("p")
        )
        result[ANY_SEVERE_KEY] = _weighted_binary_log_loss(
            per_study["y"].to_numpy().astype(np.float64), per_study["p"].to_numpy()
        )

    terms = [v for v in result.values() if not np.isnan(v)]
    if not terms:
        raise ValueError("no labelled rows: the score is undefined")
    result["score"] = float(np.mean(terms))
    return result


def _parse_row_ids(row_ids: Sequence[str]) -> pl.DataFrame:
    """Split row_ids into study_id, condition, level; raise on malformed ids."""
    ids = pl.Series("row_id", list(row_ids), dtype=pl.Utf8)
    parts = ids.str.extract_groups(ROW_ID_PATTERN)
    frame = pl.DataFrame({"row_id": ids}).with_columns(
        parts.struct.field("condition").alias("condition"),
        parts.struct.field("level").alias("level"),
    )
    bad = frame.filter(pl.col("condition").is_null())
    if bad.height:
        raise ValueError(f"malformed row_ids: {bad['row_id'].head(5).to_list()}")
    return frame


def _counts(values: pl.Series) -> np.ndarray:
    """Class counts of non-null severity strings."""
    return np.array([(values == s).sum() for s in SEVERITIES], dtype=np.float64)


# Pseudo-observations drawn from the group's pooled frequencies that each column's
# frequencies are shrunk towards: a class that happens to be absent from a small training
# set's column then keeps a small probability instead of an infinite log loss.
PRIOR_PSEUDO_COUNT = 1.0


def prior_table(train_labels: pl.DataFrame) -> pl.DataFrame:
    """The smoothed training label frequencies of every condition-level column: ``condition``,
    ``level``, ``normal_mild``, ``moderate``, ``severe`` (what :func:`prior_predictions` predicts;
    a trained bundle carries it instead of the labels).

    Frequencies are the class shares among the column's non-null labels, shrunk by
    ``PRIOR_PSEUDO_COUNT`` observations towards the pooled (Laplace-smoothed)
    frequencies of its condition group; a column with no labels takes the group's
    frequencies, and a group with no labels at all is uniform.

    Raises:
        ValueError: if a label column is absent.
    """
    cols = _label_columns()
    missing = [c for c in cols if c not in train_labels.columns]
    if missing:
        raise ValueError(f"labels table lacks columns: {missing[:5]}")

    group_freq: dict[str, np.ndarray] = {}
    for g in GROUPS:
        pooled = pl.concat(
            [train_labels[c].cast(pl.Utf8) for c in cols if CONDITION_FAMILY[c.rsplit("_", 2)[0]] == g]
        )
        pooled_counts = _counts(pooled)
        if pooled_counts.sum() == 0:
            log.warning("no training labels for group %r; prior falls back to uniform", g)
        group_freq[g] = (pooled_counts + 1.0) / (pooled_counts.sum() + len(SEVERITIES))

    rows: dict[str, list] = {"condition": [], "level": [], **{c: [] for c in _PRED_COLS}}
    for cond in CONDITIONS:
        for lv in LEVELS:
            counts = _counts(train_labels[f"{cond}_{lv}"].cast(pl.Utf8))
            freq = ((counts + PRIOR_PSEUDO_COUNT * group_freq[CONDITION_FAMILY[cond]])
                    / (counts.sum() + PRIOR_PSEUDO_COUNT))
            rows["condition"].append(cond)
            rows["level"].append(lv)
            for name, value in zip(_PRED_COLS, freq):
                rows[name].append(float(value))
    return pl.DataFrame(rows)


def priors_for_rows(table: pl.DataFrame, row_ids: Sequence[str]) -> pl.DataFrame:
    """Each row_id's prior from a :func:`prior_table`: ``row_id`` and the three
    probabilities, in ``row_ids`` order.

    Raises:
        ValueError: if a row_id is malformed or its condition and level are not in the table.
    """
    rows = (_parse_row_ids(row_ids)
            .join(table, on=["condition", "level"], how="left", maintain_order="left")
            .select("row_id", *_PRED_COLS))
    unknown = rows.filter(pl.any_horizontal(pl.col(c).is_null() for c in _PRED_COLS))
    if unknown.height:
        raise ValueError(f"no prior for rows {unknown['row_id'].head(3).to_list()} (condition or level "
                         "not in the prior table)")
    return rows


def prior_predictions(train_labels: pl.DataFrame, row_ids: Sequence[str]) -> pl.DataFrame:
    """Predict, for each row_id, the smoothed training label frequencies of its
    condition-level column (:func:`prior_table`).

    Args:
        train_labels: wide labels table (like ``train.csv``).
        row_ids: submission row ids ``f"{study_id}_{condition}_{level}"``.

    Returns:
        ``row_id``, ``normal_mild``, ``moderate``, ``severe`` in ``row_ids`` order.

    Raises:
        ValueError: if a row_id is malformed or a label column is absent.
    """
    return priors_for_rows(prior_table(train_labels), row_ids)
