"""Cross-validation folds shared by every model: grouped by study, stratified on severity."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedGroupKFold

from spinepipe.constants import LABEL_COLUMNS


def severity_summary(labels: pl.DataFrame) -> pl.Series:
    """Per study: its count of moderate-or-severe labels, binned (0, 1-2, 3-5, 6+)."""
    count = pl.sum_horizontal([pl.col(c).is_in(["Moderate", "Severe"]).cast(pl.Int32)
                               for c in LABEL_COLUMNS])
    binned = labels.select(count.alias("n"))["n"].cut([0, 2, 5], labels=["0", "1-2", "3-5", "6+"])
    return binned.cast(pl.String).alias("severity_bin")


def make_folds(labels: pl.DataFrame, n_folds: int, seed: int) -> pl.DataFrame:
    """study_id, fold, severity_bin; a fixed seed gives the same folds every time."""
    strata = severity_summary(labels)
    # bins rarer than the fold count cannot be stratified: merge them into their neighbour
    counts = strata.value_counts()
    rare = set(counts.filter(pl.col("count") < n_folds)["severity_bin"].to_list())
    y = np.array(["rare" if s in rare else s for s in strata.to_list()])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.zeros(labels.height, dtype=np.int64)
    studies = labels["study_id"].to_numpy()
    for k, (_, held_out) in enumerate(splitter.split(studies, y, groups=studies)):
        fold[held_out] = k
    return pl.DataFrame({"study_id": studies, "fold": fold, "severity_bin": strata})
