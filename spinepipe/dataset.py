"""Reading and checking a competition-layout dataset (the input contract: docs/contracts.md,
section 1 "Input dataset", lists the files, columns and rules).

The readers below are the one place the competition CSVs are parsed and checked; every stage
reads them through these, so every stage sees the same checked, deduplicated tables.

* **Bad ids stop the run.** An empty or non-integer ``study_id``, ``series_id`` or
  ``instance_number`` cell is a :class:`DatasetError` naming the file, the 1-based CSV line
  (the header is line 1) and the column. Such a row cannot be tied to a study or an image,
  and dropping it would silently lose labels or submission rows. The same holds for a
  coordinate's ``x``/``y`` (finite numbers), ``condition`` and ``level``, and for an unknown
  severity in a label cell (an empty label cell is allowed: a missing label).
* **Duplicates.** Rows repeated exactly in ``*_series_descriptions.csv``, ``train.csv`` and
  ``train_label_coordinates.csv`` are dropped with a logged warning (the first copy is
  kept). A series listed twice with different descriptions, or a ``train.csv`` study listed
  twice with different labels, is an error naming it and its lines.
* **Submission rows.** ``sample_submission.csv`` row ids must read
  ``<study_id>_<condition>_<level>`` with a known condition and level, and be unique.

:func:`validate_dataset` reads all five files and cross-checks them: a study of the sample
without series in ``test_series_descriptions.csv`` is allowed but logged (its rows fall back
to the prior downstream). The workflow calls it before any job for a real ``data_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from spinepipe.constants import (
    CONDITION_NAMES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVELS,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SUBMISSION_COLUMNS,
)

log = logging.getLogger(__name__)

LABELS_SCHEMA = {"study_id": pl.Int64, **{c: pl.String for c in LABEL_COLUMNS}}
COORDINATES_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "instance_number": pl.Int64,
                      "condition": pl.String, "level": pl.String, "x": pl.Float64,
                      "y": pl.Float64}
SERIES_SCHEMA = {"study_id": pl.Int64, "series_id": pl.Int64, "series_description": pl.String}
SUBMISSION_SCHEMA = {"row_id": pl.String, **{c: pl.Float64 for c in SUBMISSION_COLUMNS}}
ROW_ID_PATTERN = rf"^(\d+)_({'|'.join(CONDITIONS)})_({'|'.join(LEVELS)})$"
_LINE = "__line"  # 1-based line of the row in its CSV file (the header is line 1)
_SHOWN = 5        # lines quoted in a message


class DatasetError(ValueError):
    """A dataset file that does not follow the competition's layout."""


def _lines(frame: pl.DataFrame) -> str:
    lines = frame[_LINE].to_list()
    more = f" and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return ", ".join(map(str, lines[:_SHOWN])) + more


def _parse_numbers(frame: pl.DataFrame, path: Path, schema: dict[str, pl.DataType],
                   required: set[str]) -> pl.DataFrame:
    """Cast the numeric columns of an all-text frame; a cell that does not parse (or is
    empty, for a ``required`` column) is a DatasetError naming the line and column."""
    for column, dtype in schema.items():
        if dtype == pl.String:
            continue
        text = pl.col(column).str.strip_chars()
        parsed = text.cast(dtype, strict=False)
        bad = text.is_not_null() & (text != "") & parsed.is_null()
        if column in required:
            bad = bad | text.is_null() | (text == "")
            if dtype == pl.Float64:
                bad = bad | ~parsed.is_finite().fill_null(False)
        wrong = frame.filter(bad)
        if wrong.height:
            value = wrong[column][0]
            kind = "an integer" if dtype == pl.Int64 else "a finite number"
            shown = "empty" if value is None or not value.strip() else f"{value!r} is not {kind}"
            raise DatasetError(f"{path}, line {wrong[_LINE][0]}: column {column}: {shown}"
                               + (f" ({wrong.height} such rows, lines {_lines(wrong)})"
                                  if wrong.height > 1 else ""))
        frame = frame.with_columns(parsed.alias(column))
    return frame


def _read(path: Path, schema: dict[str, pl.DataType],
          required: frozenset[str] | set[str] = frozenset()) -> pl.DataFrame:
    """The schema's columns with their types, plus the CSV line of each row (``_LINE``)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except Exception as error:  # polars raises several kinds for malformed CSVs
        raise DatasetError(f"{path}: cannot be read as CSV ({error})") from error
    missing = [c for c in schema if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    frame = raw.select(list(schema)).with_row_index(_LINE, offset=2)
    return _parse_numbers(frame, path, schema, set(required))


def _deduplicate(frame: pl.DataFrame, path: Path, key: list[str] | None = None,
                 what: str = "") -> pl.DataFrame:
    """Drop exact duplicate rows (warning); rows sharing ``key`` but differing otherwise
    are a DatasetError naming ``what`` and the lines."""
    columns = [c for c in frame.columns if c != _LINE]
    kept = frame.unique(subset=columns, keep="first", maintain_order=True)
    if kept.height < frame.height:
        dropped = frame.join(kept.select(_LINE), on=_LINE, how="anti")
        log.warning("%s: %d duplicate rows dropped (lines %s)", path, dropped.height, _lines(dropped))
    if key:
        conflicts = kept.filter(pl.struct(key).is_duplicated())
        if conflicts.height:
            first = conflicts.row(0, named=True)
            same = conflicts.filter(pl.all_horizontal([pl.col(k) == first[k] for k in key]))
            name = " ".join(f"{k} {first[k]}" for k in key)
            raise DatasetError(f"{path}: {name} is listed on lines {_lines(same)} with different "
                               f"{what} ({conflicts[key[0]].n_unique()} such {key[0]}s)")
    return kept


def read_labels(path: Path) -> pl.DataFrame:
    """train.csv (or test_labels.csv): integer study ids, known severities or empty cells,
    one row per study."""
    frame = _read(path, LABELS_SCHEMA, required={"study_id"})
    bad = (frame.unpivot(index=[_LINE, "study_id"], on=list(LABEL_COLUMNS))
           .filter(pl.col("value").is_not_null() & ~pl.col("value").is_in(SEVERITIES)))
    if bad.height:
        first = bad.row(0, named=True)
        raise DatasetError(f"{path}, line {first[_LINE]}: column {first['variable']}: unknown label "
                           f"{first['value']!r} of study {first['study_id']} ({bad.height} unknown "
                           f"values; expected one of {list(SEVERITIES)} or empty)")
    return _deduplicate(frame, path, ["study_id"], "labels").drop(_LINE)


def read_coordinates(path: Path) -> pl.DataFrame:
    """train_label_coordinates.csv: every cell required; conditions and levels known."""
    frame = _read(path, COORDINATES_SCHEMA, required=set(COORDINATES_SCHEMA))
    for column, allowed in (("condition", CONDITION_NAMES.values()), ("level", LEVEL_NAMES.values())):
        unknown = frame.filter(~pl.col(column).is_in(list(allowed)).fill_null(False))
        if unknown.height:
            raise DatasetError(f"{path}, line {unknown[_LINE][0]}: column {column}: unknown value "
                               f"{unknown[column][0]!r} ({unknown.height} rows, lines {_lines(unknown)}; "
                               f"expected one of {sorted(allowed)})")
    return _deduplicate(frame, path).drop(_LINE)


def read_series_descriptions(path: Path) -> pl.DataFrame:
    """Series table; unknown descriptions are logged (they are skipped downstream), not fatal."""
    frame = _read(path, SERIES_SCHEMA, required={"study_id", "series_id"})
    frame = _deduplicate(frame, path, ["study_id", "series_id"], "descriptions").drop(_LINE)
    unknown = frame.filter(~pl.col("series_description").is_in(SERIES_DESCRIPTIONS).fill_null(False))
    if unknown.height:
        log.warning("%s: %d series with unknown descriptions %s", path, unknown.height,
                    unknown["series_description"].unique().to_list()[:5])
    return frame


def read_submission(path: Path) -> pl.DataFrame:
    """sample_submission.csv: unique row ids ``<study_id>_<condition>_<level>``."""
    frame = _read(path, SUBMISSION_SCHEMA)
    bad = frame.filter(~pl.col("row_id").str.contains(ROW_ID_PATTERN).fill_null(False))
    if bad.height:
        raise DatasetError(f"{path}, line {bad[_LINE][0]}: row_id {bad['row_id'][0]!r} is not "
                           f"<study_id>_<condition>_<level> with a known condition and level "
                           f"({bad.height} such rows, lines {_lines(bad)})")
    repeated = frame.filter(pl.col("row_id").is_duplicated())
    if repeated.height:
        first = repeated["row_id"][0]
        raise DatasetError(f"{path}: row_id {first!r} is listed more than once (lines "
                           f"{_lines(repeated.filter(pl.col('row_id') == first))}; "
                           f"{repeated['row_id'].n_unique()} repeated ids)")
    return frame.drop(_LINE)


@dataclass(frozen=True)
class Dataset:
    """The checked competition tables of one data folder."""

    labels: pl.DataFrame
    coordinates: pl.DataFrame
    series: dict[str, pl.DataFrame]  # split -> series descriptions
    sample: pl.DataFrame


def submission_study_ids(sample: pl.DataFrame) -> pl.Series:
    return sample["row_id"].str.extract(r"^(\d+)_", 1).cast(pl.Int64).unique().sort()


def validate_dataset(data_dir: Path) -> Dataset:
    """Read and check the five competition files; raise DatasetError naming the file, the
    line and the problem. Studies of the sample without test series are logged."""
    dataset = Dataset(labels=read_labels(data_dir / "train.csv"),
                      coordinates=read_coordinates(data_dir / "train_label_coordinates.csv"),
                      series={split: read_series_descriptions(data_dir / f"{split}_series_descriptions.csv")
                              for split in ("train", "test")},
                      sample=read_submission(data_dir / "sample_submission.csv"))
    sample_studies = set(submission_study_ids(dataset.sample).to_list())
    test_studies = set(dataset.series["test"]["study_id"].to_list())
    if without := sorted(sample_studies - test_studies):
        log.warning("%s: %d studies of sample_submission.csv have no series in "
                    "test_series_descriptions.csv (e.g. %s): their rows will take the prior",
                    data_dir, len(without), without[:_SHOWN])
    if unsubmitted := sorted(test_studies - sample_studies):
        log.warning("%s: %d studies of test_series_descriptions.csv are not in "
                    "sample_submission.csv (e.g. %s): they are not submitted",
                    data_dir, len(unsubmitted), unsubmitted[:_SHOWN])
    unlisted = set(dataset.labels["study_id"].to_list()) - set(dataset.series["train"]["study_id"].to_list())
    if unlisted:
        log.warning("%s: %d studies of train.csv have no series in train_series_descriptions.csv "
                    "(e.g. %s)", data_dir, len(unlisted), sorted(unlisted)[:_SHOWN])
    return dataset


def validate_predict_folder(data_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The folder of studies a trained bundle grades: ``test_series_descriptions.csv`` with at
    least one study, ``test_images/``, and optionally ``sample_submission.csv`` (no train
    file is read). Returns the series table and the sample (None when absent); raises
    DatasetError naming the file and the problem."""
    series = read_series_descriptions(data_dir / "test_series_descriptions.csv")
    if series.height == 0:
        raise DatasetError(f"{data_dir / 'test_series_descriptions.csv'}: no studies to grade")
    if not (data_dir / "test_images").is_dir():
        raise DatasetError(f"{data_dir / 'test_images'}: missing (the studies' DICOM folders)")
    sample_path = data_dir / "sample_submission.csv"
    sample = read_submission(sample_path) if sample_path.is_file() else None
    if sample is not None:
        without = sorted(set(submission_study_ids(sample).to_list()) - set(series["study_id"].to_list()))
        if without:
            log.warning("%s: %d studies have no series in test_series_descriptions.csv (e.g. %s): "
                        "their rows will take the prior", sample_path, len(without), without[:_SHOWN])
    return series, sample


def submission_rows(study_ids: Sequence[int]) -> pl.DataFrame:
    """The 25 submission row ids of each study (every condition at every level), in the
    competition's sample order: what is graded when no sample_submission.csv is given."""
    return pl.DataFrame({"row_id": [f"{s}_{c}_{lv}" for s in study_ids for c in CONDITIONS for lv in LEVELS]},
                        schema={"row_id": pl.String})


def summarize_dataset(data_dir: Path) -> dict[str, Any]:
    """Counts that tell whether a dataset is complete; raises DatasetError on a broken one."""
    dataset = validate_dataset(data_dir)
    train = dataset.labels
    summary: dict[str, Any] = {"data_dir": str(data_dir), "train_studies": train.height}
    for split in ("train", "test"):
        series = dataset.series[split]
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
    summary["coordinates"] = dataset.coordinates.height
    summary["submission_rows"] = dataset.sample.height
    sample_studies = set(submission_study_ids(dataset.sample).to_list())
    summary["submission_studies_without_series"] = len(
        sample_studies - set(dataset.series["test"]["study_id"].to_list()))
    log.info("dataset summary: %s", summary)
    return summary
