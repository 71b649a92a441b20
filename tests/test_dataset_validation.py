"""Reading the competition CSVs validates them fully: bad ids name the file, line and
column; duplicates are dropped (or, when they contradict, stop the run); submission row ids
are checked; every reader returns the same deduplicated table to every stage."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from spinepipe.constants import CONDITIONS, LABEL_COLUMNS, LEVELS
from spinepipe.dataset import (
    DatasetError,
    read_coordinates,
    read_labels,
    read_series_descriptions,
    read_submission,
    summarize_dataset,
    validate_dataset,
)

TRAIN_STUDIES = (101, 102)
TEST_STUDIES = (201, 202)


def write_dataset(folder: Path) -> Path:
    """A small, valid competition-layout dataset (CSVs only)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = ["study_id," + ",".join(LABEL_COLUMNS)]
    for study in TRAIN_STUDIES:
        labels.append(f"{study}," + ",".join(["Normal/Mild"] * (len(LABEL_COLUMNS) - 1) + ["Severe"]))
    (folder / "train.csv").write_text("\n".join(labels) + "\n")
    (folder / "train_label_coordinates.csv").write_text(
        "study_id,series_id,instance_number,condition,level,x,y\n"
        "101,1011,8,Spinal Canal Stenosis,L1/L2,120.5,80.25\n"
        "101,1011,8,Spinal Canal Stenosis,L2/L3,121.0,100.0\n"
        "102,1021,3,Left Neural Foraminal Narrowing,L4/L5,90.0,150.0\n")
    (folder / "train_series_descriptions.csv").write_text(
        "study_id,series_id,series_description\n"
        "101,1011,Sagittal T2/STIR\n101,1012,Sagittal T1\n101,1013,Axial T2\n"
        "102,1021,Sagittal T1\n102,1022,Sagittal T2/STIR\n")
    (folder / "test_series_descriptions.csv").write_text(
        "study_id,series_id,series_description\n"
        "201,2011,Sagittal T2/STIR\n201,2012,Sagittal T1\n202,2021,Axial T2\n")
    rows = ["row_id,normal_mild,moderate,severe"]
    rows += [f"{s}_{c}_{lv},0.333333,0.333333,0.333333" for s in TEST_STUDIES for c in CONDITIONS
             for lv in LEVELS]
    (folder / "sample_submission.csv").write_text("\n".join(rows) + "\n")
    return folder


def _edit(path: Path, line: int, text: str) -> None:
    """Replace 1-based ``line`` of a file."""
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text + "\n")


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def test_valid_dataset_reads_and_summarizes(dataset):
    checked = validate_dataset(dataset)
    assert checked.labels.height == 2 and checked.coordinates.height == 3
    assert checked.sample.height == 2 * 25
    assert checked.labels.schema["study_id"] == pl.Int64
    assert checked.coordinates.schema["x"] == pl.Float64
    summary = summarize_dataset(dataset)
    assert summary["submission_rows"] == 50 and summary["train_studies"] == 2


@pytest.mark.parametrize("file, line, text, column, problem", [
    ("train_series_descriptions.csv", 3, ",1012,Sagittal T1", "study_id", "empty"),
    ("train_series_descriptions.csv", 4, "101,abc,Axial T2", "series_id", "'abc' is not an integer"),
    ("train_label_coordinates.csv", 3, "101,1011,,Spinal Canal Stenosis,L2/L3,121.0,100.0",
     "instance_number", "empty"),
    ("train_label_coordinates.csv", 4, "102,1021,3.5,Left Neural Foraminal Narrowing,L4/L5,90,150",
     "instance_number", "'3.5' is not an integer"),
    ("train_label_coordinates.csv", 2, "101,1011,8,Spinal Canal Stenosis,L1/L2,left,80.25",
     "x", "'left' is not a finite number"),
    ("train.csv", 3, "x102" + ",Normal/Mild" * 25, "study_id", "'x102' is not an integer"),
    ("test_series_descriptions.csv", 4, "202,,Axial T2", "series_id", "empty"),
])
def test_bad_id_cells_name_file_line_and_column(dataset, file, line, text, column, problem):
    _edit(dataset / file, line, text)
    with pytest.raises(DatasetError) as info:
        validate_dataset(dataset)
    message = str(info.value)
    assert f"{file}, line {line}: column {column}: {problem}" in message


def test_unknown_condition_and_label_name_their_line(dataset):
    _edit(dataset / "train_label_coordinates.csv", 3,
          "101,1011,8,Spinal Stenosis,L2/L3,121.0,100.0")
    with pytest.raises(DatasetError, match=r"train_label_coordinates.csv, line 3: column condition"):
        read_coordinates(dataset / "train_label_coordinates.csv")
    _edit(dataset / "train.csv", 2, "101" + ",Normal/Mild" * 24 + ",Sever")
    with pytest.raises(DatasetError, match=r"train.csv, line 2: column right_subarticular_stenosis_l5_s1"):
        read_labels(dataset / "train.csv")


def test_exact_duplicates_are_dropped_with_a_warning(dataset, caplog):
    _append(dataset / "train_series_descriptions.csv", "101,1012,Sagittal T1")
    _append(dataset / "train_label_coordinates.csv",
            "102,1021,3,Left Neural Foraminal Narrowing,L4/L5,90.0,150.0")
    _append(dataset / "train.csv", "102," + ",".join(["Normal/Mild"] * 24 + ["Severe"]))
    with caplog.at_level(logging.WARNING, logger="spinepipe.dataset"):
        series = read_series_descriptions(dataset / "train_series_descriptions.csv")
        coordinates = read_coordinates(dataset / "train_label_coordinates.csv")
        labels = read_labels(dataset / "train.csv")
    assert series.height == 5 and coordinates.height == 3 and labels.height == 2
    assert series["series_id"].to_list() == [1011, 1012, 1013, 1021, 1022]  # order kept
    warnings = [r.getMessage() for r in caplog.records if "duplicate rows dropped" in r.getMessage()]
    assert len(warnings) == 3
    assert any("train_series_descriptions.csv" in w and "lines 7" in w for w in warnings)


def test_a_study_listed_twice_with_different_labels_is_an_error(dataset):
    _append(dataset / "train.csv", "102," + ",".join(["Moderate"] * 25))
    with pytest.raises(DatasetError) as info:
        read_labels(dataset / "train.csv")
    assert "study_id 102" in str(info.value) and "lines 3, 4" in str(info.value)
    assert "different labels" in str(info.value)


def test_a_series_with_two_descriptions_is_an_error(dataset):
    _append(dataset / "train_series_descriptions.csv", "101,1011,Axial T2")
    with pytest.raises(DatasetError, match=r"study_id 101 series_id 1011 is listed on lines 2, 7"):
        read_series_descriptions(dataset / "train_series_descriptions.csv")


@pytest.mark.parametrize("row_id", [
    "201_spinal_canal_stenosis_l6_s1",            # unknown level
    "201_spinal_stenosis_l1_l2",                  # unknown condition
    "abc_spinal_canal_stenosis_l1_l2",            # no study id
    "201spinal_canal_stenosis_l1_l2",             # no separator
    "201_spinal_canal_stenosis_l1_l2_extra",
])
def test_malformed_submission_row_ids_name_their_line(dataset, row_id):
    _edit(dataset / "sample_submission.csv", 7, f"{row_id},0.3,0.3,0.4")
    with pytest.raises(DatasetError) as info:
        read_submission(dataset / "sample_submission.csv")
    assert "sample_submission.csv, line 7" in str(info.value) and row_id in str(info.value)


def test_repeated_submission_row_id_is_an_error(dataset):
    _edit(dataset / "sample_submission.csv", 9, "201_spinal_canal_stenosis_l1_l2,0.3,0.3,0.4")
    with pytest.raises(DatasetError, match=r"201_spinal_canal_stenosis_l1_l2.*lines 2, 9"):
        read_submission(dataset / "sample_submission.csv")


def test_sample_study_without_series_is_allowed_and_logged(dataset, caplog):
    rows = [f"999_{c}_{lv},0.3,0.3,0.4" for c in CONDITIONS for lv in LEVELS]
    _append(dataset / "sample_submission.csv", "\n".join(rows))
    with caplog.at_level(logging.WARNING, logger="spinepipe.dataset"):
        checked = validate_dataset(dataset)
    assert checked.sample.height == 75
    assert any("have no series" in r.getMessage() and "999" in r.getMessage() for r in caplog.records)
    assert summarize_dataset(dataset)["submission_studies_without_series"] == 1
