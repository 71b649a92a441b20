"""Series metadata: header parse, bad files recorded not fatal, series flags, caching."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest

from spinepipe.constants import AXIAL_T2
from spinepipe.dataset import read_series_descriptions
from spinepipe.metadata import parse_instances, parse_study, read_instance_header, summarize_series


@pytest.fixture(scope="module")
def quirky_metadata(quirky_dataset):
    dataset, _ = quirky_dataset
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    instances = parse_instances(dataset / "train_images", table)
    return dataset, instances, summarize_series(instances, table)


def test_one_row_per_file_with_header_values(quirky_metadata):
    dataset, instances, _ = quirky_metadata
    files = sorted((dataset / "train_images").glob("*/*/*.dcm"))
    assert instances.height == len(files)
    assert (instances["status"] == "ok").all()
    row = instances.filter(pl.col("path") == str(files[0])).row(0, named=True)
    ds = pydicom.dcmread(files[0])
    assert row["instance_number"] == ds.InstanceNumber
    assert [row["ipp_x"], row["ipp_y"], row["ipp_z"]] == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert [row[f"iop_{i}"] for i in range(6)] == pytest.approx([float(v) for v in ds.ImageOrientationPatient])
    assert (row["rows"], row["columns"]) == (ds.Rows, ds.Columns)
    assert row["pixel_spacing_row"] == pytest.approx(float(ds.PixelSpacing[0]))
    assert row["patient_position"] == ds.PatientPosition


def test_series_flags_match_the_acquisition(quirky_metadata):
    dataset, _, series = quirky_metadata
    quirks = pl.read_csv(dataset / "quirks.csv").filter(pl.col("split") == "train")
    reversed_ids = set(quirks.filter(pl.col("quirk") == "reversed_order")["series_id"])
    ffs = set(quirks.filter(pl.col("quirk") == "feet_first")["study_id"])
    blocks = set(quirks.filter(pl.col("quirk") == "axial_blocks")["series_id"])
    assert series["geometry_ok"].all()
    for row in series.iter_rows(named=True):
        if row["series_description"] == AXIAL_T2:
            assert row["plane"] == "axial"
            # axial slices are acquired head to foot against a head-ward normal
            assert row["reversed_order"] == (row["series_id"] not in reversed_ids)
            assert row["mixed_orientation"] == (row["series_id"] in blocks)
            if row["series_id"] in blocks:
                assert row["n_orientations"] == 5 and row["irregular_spacing"] is False
        else:
            assert row["plane"] == "sagittal" and row["n_orientations"] == 1
            assert row["reversed_order"] == ((row["series_id"] in reversed_ids) != (row["study_id"] in ffs))
        positions = np.array(row["positions_mm"])
        assert np.all(np.diff(positions) > 0)
        assert len(row["instances_by_position"]) == row["n_files"]


def _break_copy(dataset: Path, tmp_path: Path) -> tuple[Path, pl.DataFrame, dict[str, Path]]:
    """A copy of one study with broken files of every kind."""
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    study_id = table["study_id"][0]
    root = tmp_path / "train_images"
    shutil.copytree(dataset / "train_images" / str(study_id), root / str(study_id))
    series_dirs = sorted(p for p in (root / str(study_id)).iterdir())
    files = sorted(series_dirs[0].glob("*.dcm"))
    broken = {"truncated": files[0], "unreadable": files[1], "no_pixels": files[2],
              "no_geometry": files[3]}
    data = broken["truncated"].read_bytes()
    broken["truncated"].write_bytes(data[: len(data) // 2])
    broken["unreadable"].write_bytes(b"not a dicom file at all" * 10)
    ds = pydicom.dcmread(broken["no_pixels"])
    del ds.PixelData
    ds.save_as(broken["no_pixels"])
    ds = pydicom.dcmread(broken["no_geometry"])
    del ds.ImagePositionPatient
    ds.save_as(broken["no_geometry"])
    # every file of the second series unreadable; a third series listed but absent
    for path in series_dirs[1].glob("*.dcm"):
        path.write_bytes(b"\x00" * 64)
    shutil.rmtree(series_dirs[2])
    return root, table.filter(pl.col("study_id") == study_id), broken


def test_bad_files_are_recorded_with_a_reason(quirky_dataset, tmp_path):
    dataset, _ = quirky_dataset
    root, table, broken = _break_copy(dataset, tmp_path)
    instances = parse_instances(root, table)
    for status, path in broken.items():
        row = instances.filter(pl.col("path") == str(path)).row(0, named=True)
        assert row["status"] == status, (status, row["error"])
        assert row["error"]
    series = summarize_series(instances, table)
    by_id = {r["series_id"]: r for r in series.iter_rows(named=True)}
    ids = table["series_id"].to_list()
    assert by_id[int(broken["truncated"].parent.name)]["n_bad"] == 4
    assert by_id[int(broken["truncated"].parent.name)]["geometry_ok"]
    unreadable_series = [r for r in series.iter_rows(named=True) if r["n_files"] and r["n_ok"] == 0]
    assert unreadable_series and not unreadable_series[0]["geometry_ok"]
    assert unreadable_series[0]["geometry_error"].startswith("no usable slice: ")
    assert "unreadable" in unreadable_series[0]["geometry_error"]
    absent = [r for r in series.iter_rows(named=True) if r["missing_folder"]]
    assert len(absent) == 1 and absent[0]["geometry_error"] == "no files"
    assert len(ids) == series.height


def test_unknown_description_is_flagged_not_guessed(quirky_metadata):
    dataset, instances, _ = quirky_metadata
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    renamed = table.with_columns(series_description=pl.lit("Coronal STIR")).head(1)
    row = summarize_series(instances, renamed).row(0, named=True)
    assert not row["known_description"] and not row["geometry_ok"]
    assert "Coronal STIR" in row["geometry_error"]


def test_header_parse_is_cached_per_study(quirky_dataset, tmp_path, monkeypatch):
    dataset, _ = quirky_dataset
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    study_id = table["study_id"][0]
    root = tmp_path / "train_images"
    shutil.copytree(dataset / "train_images" / str(study_id), root / str(study_id))
    series_ids = table.filter(pl.col("study_id") == study_id)["series_id"].to_list()
    first = parse_study(root / str(study_id), series_ids, tmp_path / "cache")

    import spinepipe.metadata as metadata

    calls = []
    original = metadata.read_instance_header
    monkeypatch.setattr(metadata, "read_instance_header",
                        lambda *a: calls.append(a) or original(*a))
    again = parse_study(root / str(study_id), series_ids, tmp_path / "cache")
    assert calls == [] and again.equals(first)
    changed = next((root / str(study_id)).glob("*/*.dcm"))
    changed.write_bytes(changed.read_bytes()[:200])
    parse_study(root / str(study_id), series_ids, tmp_path / "cache")
    assert len(calls) == first.height  # the changed study is parsed again


def test_instance_header_of_a_missing_file_is_recorded(tmp_path):
    row = read_instance_header(tmp_path / "1.dcm", 1, 2)
    assert row["status"] == "unreadable" and "No such file" in row["error"]
