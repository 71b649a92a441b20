"""Reading and checking a competition-layout dataset (shared/DESIGN.md, input contract)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from spinepipe.constants import (
    CONDITION_NAMES, LABEL_COLUMNS, LEVEL_NAMES, SERIES_DESCRIPTIONS, SEVERITIES,
    SUBMISSION_COLUMNS,
)

log = logging.getLogger(__name__)

LABELS_SCHEMA = {"study_id": pl.Int64, **{c: pl.String for c in LABEL_COLUMNS}}
COORDINATES_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "instance_number": pl.Int64,
                      "condition": pl.String, "level": pl.String, "x": pl.Float64,
                      "y": pl.Float64}
SERIES_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String}
SUBMISSION_SCHEMA = {"row_id": pl.String, **{c: pl.Float64 for c in SUBMISSION_COLUMNS}}


class DatasetError(ValueError):
    """A dataset file that does not follow the competition's layout."""


def _read(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        frame = pl.read_csv(path, schema_overrides=schema)
    except Exception as error:  # polars raises several kinds for malformed CSVs
        raise DatasetError(f"{path}: cannot be read as CSV ({error})") from error
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    return frame.select(list(schema))


def read_labels(path: Path) -> pl.DataFrame:
    """train.csv (or test_labels.csv): checks that every value is a known severity or empty."""
    frame = _read(path, LABELS_SCHEMA)
    bad = (frame.unpivot(index="study_id", on=list(LABEL_COLUMNS))
           .filter(pl.col("value").is_not_null() & ~pl.col("value").is_in(SEVERITIES)))
    if bad.height:
        first = bad.row(0, named=True)
        raise DatasetError(f"{path}: {bad.height} unknown label values, e.g. "
                           f"{first['value']!r} in {first['variable']} of study {first['study_id']}")
    return frame


def read_coordinates(path: Path) -> pl.DataFrame:
    frame = _read(path, COORDINATES_SCHEMA)
    for column, allowed in (("condition", CONDITION_NAMES.values()), ("level", LEVEL_NAMES.values())):
        unknown = frame.filter(~pl.col(column).is_in(list(allowed)))[column].unique().to_list()
        if unknown:
            raise DatasetError(f"{path}: unknown {column} values {unknown[:5]}")
    return frame


def read_series_descriptions(path: Path) -> pl.DataFrame:
    """Series table; unknown descriptions are logged (they are skipped downstream), not fatal."""
    frame = _read(path, SERIES_SCHEMA)
    unknown = frame.filter(~pl.col("series_description").is_in(SERIES_DESCRIPTIONS))
    if unknown.height:
        log.warning("%s: %d series with unknown descriptions %s", path, unknown.height,
                    unknown["series_description"].unique().to_list()[:5])
    return frame


def read_submission(path: Path) -> pl.DataFrame:
    return _read(path, SUBMISSION_SCHEMA)


def summarize_dataset(data_dir: Path) -> dict[str, Any]:
    """Counts that tell whether a dataset is complete; raises DatasetError on a broken one."""
    train = read_labels(data_dir / "train.csv")
    coords = read_coordinates(data_dir / "train_label_coordinates.csv")
    summary: dict[str, Any] = {"data_dir": str(data_dir), "train_studies": train.height}
    for split in ("train", "test"):
        series = read_series_descriptions(data_dir / f"{split}_series_descriptions.csv")
        folders = [data_dir / f"{split}_images" / str(s) / str(r)
                   for s, r in series.select("study_id", "series_id").iter_rows()]
        missing = [str(f) for f in folders if not f.is_dir()]
        for folder in missing[:10]:
            log.warning("series folder listed but absent: %s", folder)
        summary[f"{split}_series"] = dict(
            series.group_by("series_description").len().sort("series_description").iter_rows())
        summary[f"{split}_series_folders_missing"] = len(missing)
        summary[f"{split}_studies_with_series"] = series["study_id"].n_unique()
    long = train.unpivot(index="study_id", on=list(LABEL_COLUMNS))
    summary["labels"] = {str(k): v for k, v in long.group_by("value").len().sort("value").iter_rows()}
    summary["coordinates"] = coords.height
    sample = read_submission(data_dir / "sample_submission.csv")
    summary["submission_rows"] = sample.height
    log.info("dataset summary: %s", summary)
    return summary
