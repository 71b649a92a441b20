"""Folds: grouped by study, stratified on severity, fixed by the seed."""

from __future__ import annotations

import numpy as np
import polars as pl

from spinepipe.constants import LABEL_COLUMNS
from spinepipe.folds import make_folds, severity_summary


def _labels(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.choice(["Normal/Mild", "Moderate", "Severe"], p=[0.75, 0.17, 0.08], size=(n, 25))
    return pl.DataFrame({"study_id": np.arange(1000, 1000 + n),
                         **{c: values[:, i] for i, c in enumerate(LABEL_COLUMNS)}})


def test_severity_summary_counts_moderate_or_severe():
    labels = _labels(3).with_columns([pl.lit("Normal/Mild").alias(c) for c in LABEL_COLUMNS])
    labels = labels.with_columns(pl.Series(LABEL_COLUMNS[0], ["Severe", "Moderate", None]),
                                 pl.Series(LABEL_COLUMNS[1], ["Moderate", "Normal/Mild", None]))
    assert severity_summary(labels).to_list() == ["1-2", "1-2", "0"]


def test_folds_are_grouped_stratified_and_deterministic():
    labels = _labels(120)
    folds = make_folds(labels, 4, seed=7)
    assert folds["study_id"].is_unique().all() and folds.height == 120
    sizes = folds.group_by("fold").len()["len"].to_numpy()
    assert sizes.min() >= 25
    # every severity bin is spread over the folds in proportion
    share = folds.group_by("fold", "severity_bin").len().join(
        folds.group_by("severity_bin").len(), on="severity_bin", suffix="_bin")
    share = share.with_columns(frac=pl.col("len") / pl.col("len_bin"))
    assert share.filter(pl.col("len_bin") >= 20)["frac"].is_between(0.1, 0.4).all()
    assert make_folds(labels, 4, seed=7).equals(folds)
    assert not make_folds(labels, 4, seed=8)["fold"].equals(folds["fold"])
