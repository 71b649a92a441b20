"""The cases each gallery shows, chosen from files a run already wrote (pure polars).

Where a study sheet (``spinepipe.qa.sheet``) shows everything about one study, a gallery shows
one thing about many: the cases a run flags, most important first. Every selection returns the
same columns (``CASE_SCHEMA``: ``gallery, study_id, condition, level, value, note, row_id,
series_id``), so the galleries can be concatenated into one CSV beside the images
(``cases_table``). The galleries (``GALLERIES``):

- ``localization_errors`` (``results/localize/label_noise.csv``): the annotations farthest from
  their out-of-fold predicted point.
- ``label_noise``: the same, only the annotations flagged as label noise (over the
  threshold), largest first.
- ``confident_wrong`` (``results/eval/oof_end_to_end.csv`` against the labels): rows whose most
  probable severity is not the true one, by the probability of that wrong severity.
- ``degraded`` (``results/eval/degraded_rows.csv``): every row graded with a fallback, with
  its reason.

What each case's tile shows: ``spinepipe.qa.tiles``; the contact sheets:
``spinepipe.qa.galleries``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from spinepipe.constants import CONDITION_NAMES, LEVEL_NAMES, SUBMISSION_COLUMNS, split_row_id

#: Gallery name -> contact sheet title.
GALLERIES: dict[str, str] = {
    "localization_errors": "Largest localization errors (annotation vs out-of-fold prediction)",
    "label_noise": "Annotations flagged as label noise",
    "confident_wrong": "Confidently wrong severities (out-of-fold)",
    "degraded": "Submission rows graded with a fallback",
}

#: Columns (and types) of every case frame.
CASE_SCHEMA: dict[str, pl.DataType] = {
    "gallery": pl.String(), "study_id": pl.Int64(), "condition": pl.String(), "level": pl.String(),
    "value": pl.Float64(), "note": pl.String(), "row_id": pl.String(), "series_id": pl.Int64(),
}

# Inverse name maps: "Left Neural Foraminal Narrowing" -> condition key, "L1/L2" -> "l1_l2".
CONDITION_KEYS: dict[str, str] = {name: key for key, name in CONDITION_NAMES.items()}
LEVEL_KEYS: dict[str, str] = {name: key for key, name in LEVEL_NAMES.items()}


# --------------------------------------------------------------------------- row ids


def parse_row_id(row_id: str) -> tuple[int, str, str]:
    """``"36119832_left_neural_foraminal_narrowing_l1_l2"`` -> ``(36119832, "Left Neural
    Foraminal Narrowing", "L1/L2")``; ValueError for anything else."""
    study, condition, level = split_row_id(row_id)
    return study, CONDITION_NAMES[condition], LEVEL_NAMES[level]


def _parse_or_none(row_id: str) -> tuple[int | None, str | None, str | None]:
    try:
        return parse_row_id(row_id)
    except ValueError:
        return None, None, None


# --------------------------------------------------------------------------- selection


def _case_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts with any subset of ``CASE_SCHEMA``) as a case frame, in that column order."""
    return pl.DataFrame([{k: r.get(k) for k in CASE_SCHEMA} for r in rows], schema=CASE_SCHEMA)


def _distance_cases(noise: pl.DataFrame, gallery: str, n: int, prefix: str) -> pl.DataFrame:
    top = (noise.filter(pl.col("distance_mm").is_not_null() & pl.col("distance_mm").is_finite())
           .sort(["distance_mm", "study_id", "condition", "level"],
                 descending=[True, False, False, False])
           .head(max(n, 0)))
    return _case_frame([
        {"gallery": gallery, "study_id": r["study_id"], "condition": r["condition"],
         "level": r["level"], "value": float(r["distance_mm"]),
         "note": f"{prefix}annotation {r['distance_mm']:.1f} mm from the out-of-fold prediction",
         "series_id": r.get("series_id"),
         "row_id": _row_id_of(r["study_id"], r["condition"], r["level"])}
        for r in top.iter_rows(named=True)])


def _row_id_of(study_id: int | None, condition: str | None, level: str | None) -> str | None:
    if study_id is None or condition not in CONDITION_KEYS or level not in LEVEL_KEYS:
        return None
    return f"{study_id}_{CONDITION_KEYS[condition]}_{LEVEL_KEYS[level]}"


def localization_error_cases(label_noise: pl.DataFrame, n: int) -> pl.DataFrame:
    """Gallery "localization_errors": the ``n`` annotations farthest (``distance_mm``, in the
    annotated slice's plane) from their out-of-fold prediction, largest first."""
    return _distance_cases(label_noise, "localization_errors", n, "")


def label_noise_cases(label_noise: pl.DataFrame, n: int) -> pl.DataFrame:
    """Gallery "label_noise": the annotations flagged ``noisy`` (over the label-noise
    threshold), largest distance first, at most ``n``."""
    noisy = pl.col("noisy")
    if label_noise.schema["noisy"] == pl.String:  # a CSV read without type inference
        noisy = noisy.str.to_lowercase() == "true"
    return _distance_cases(label_noise.filter(noisy.fill_null(False)), "label_noise", n,
                           "label noise: ")


def confident_wrong_cases(oof: pl.DataFrame, labels_long: pl.DataFrame, n: int) -> pl.DataFrame:
    """Gallery "confident_wrong": labelled rows whose most probable severity is not the true
    one, by that (wrong) probability, highest first (probabilities normalised per row, as
    the metric does). Unlabelled rows and rows without a probability are left out."""
    columns = list(SUBMISSION_COLUMNS)
    joined = (oof.select("row_id", *columns)
              .join(labels_long.select("row_id", pl.col("target").cast(pl.Int64)), on="row_id",
                    how="inner")
              .filter(pl.col("target").is_not_null()
                      & pl.all_horizontal([pl.col(c).is_not_null() for c in columns])))
    if joined.height == 0:
        return _case_frame([])
    probs = joined.select(columns).to_numpy().astype(np.float64)
    total = probs.sum(axis=1, keepdims=True)
    probs = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
    predicted = probs.argmax(axis=1)
    scored = joined.with_columns(pl.Series("predicted", predicted, dtype=pl.Int64),
                                 pl.Series("confidence", probs.max(axis=1)),
                                 pl.Series("p", probs.tolist(), dtype=pl.List(pl.Float64)))
    wrong = (scored.filter(pl.col("predicted") != pl.col("target"))
             .sort(["confidence", "row_id"], descending=[True, False]).head(max(n, 0)))
    rows = []
    for r in wrong.iter_rows(named=True):
        study, condition, level = _parse_or_none(r["row_id"])
        p = " / ".join(f"{v:.2f}" for v in r["p"])
        rows.append({"gallery": "confident_wrong", "study_id": study, "condition": condition,
                     "level": level, "value": float(r["confidence"]), "row_id": r["row_id"],
                     "note": (f"predicted {columns[r['predicted']]} {r['confidence']:.2f}, "
                              f"truth {columns[r['target']]} (p = {p})")})
    return _case_frame(rows)


def degraded_cases(degraded: pl.DataFrame, n: int | None = None) -> pl.DataFrame:
    """Gallery "degraded": every row graded with a fallback (the first ``n`` when given), in
    the file's order; value 0.0, note "reason -> fallback"."""
    frame = degraded if n is None else degraded.head(max(n, 0))
    rows = []
    for r in frame.iter_rows(named=True):
        study, condition, level = _parse_or_none(r["row_id"])
        rows.append({"gallery": "degraded", "study_id": study, "condition": condition,
                     "level": level, "value": 0.0, "row_id": r["row_id"],
                     "note": f"{r['reason']} -> {r['fallback']}"})
    return _case_frame(rows)


def cases_table(*frames: pl.DataFrame) -> pl.DataFrame:
    """The case frames of several galleries as one table (``CASE_SCHEMA``), in the order given."""
    if not frames:
        return _case_frame([])
    return pl.concat([f.select([pl.col(c).cast(t) for c, t in CASE_SCHEMA.items()]) for f in frames])
