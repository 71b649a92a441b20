"""Header and file defects of real archives: each is recorded with a reason, none crashes the
metadata stage, and none passes as good geometry."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from spinepipe.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2
from spinepipe.dataset import read_coordinates, read_series_descriptions
from spinepipe.metadata import parse_instances, parse_study, summarize_series
from spinepipe.xref import annotation_points, axial_cross_reference, level_points, stack_geometries


@pytest.fixture()
def one_study(tiny_dataset, tmp_path) -> tuple[Path, pl.DataFrame]:
    """A private copy of the first train study: (image root, its series table)."""
    dataset, _ = tiny_dataset
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    study_id = table["study_id"][0]
    root = tmp_path / "train_images"
    shutil.copytree(dataset / "train_images" / str(study_id), root / str(study_id))
    return root, table.filter(pl.col("study_id") == study_id)


def _series_dir(root: Path, table: pl.DataFrame, description: str) -> Path:
    row = table.filter(pl.col("series_description") == description).row(0, named=True)
    return root / str(row["study_id"]) / str(row["series_id"])


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _parse(root: Path, table: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    instances = parse_instances(root, table)
    return instances, summarize_series(instances, table)


@pytest.mark.parametrize("tag, value, words", [
    ("ImageOrientationPatient", ["nan", "1", "0", "0", "0", "-1"], "not finite"),
    ("ImageOrientationPatient", [0, 0, 0, 0, 0, 0], "length"),
    ("ImageOrientationPatient", [0, 1, 0, 0, 1, 0], "orthogonal"),
    ("ImagePositionPatient", ["nan", "0", "0"], "ImagePositionPatient"),
    ("PixelSpacing", [0, 0], "PixelSpacing"),
])
def test_invalid_geometry_is_never_geometry_ok(one_study, tag, value, words):
    root, table = one_study
    folder = _series_dir(root, table, SAGITTAL_T2)
    for path in folder.glob("*.dcm"):
        _edit(path, lambda ds: setattr(ds, tag, value))
    instances, series = _parse(root, table)
    bad = instances.filter(pl.col("series_id") == int(folder.name))
    assert (bad["status"] == "bad_geometry").all()
    assert bad["error"].str.contains(words).all(), bad["error"][0]
    row = series.filter(pl.col("series_id") == int(folder.name)).row(0, named=True)
    assert not row["geometry_ok"] and "bad_geometry" in row["geometry_error"]
    assert series.filter(pl.col("series_id") != int(folder.name))["geometry_ok"].all()


def test_one_slice_with_bad_geometry_is_dropped_from_its_series(one_study):
    root, table = one_study
    folder = _series_dir(root, table, SAGITTAL_T1)
    victim = sorted(folder.glob("*.dcm"))[2]
    _edit(victim, lambda ds: setattr(ds, "PixelSpacing", [0, 0.5]))
    instances, series = _parse(root, table)
    assert instances.filter(pl.col("path") == str(victim))["status"].to_list() == ["bad_geometry"]
    row = series.filter(pl.col("series_id") == int(folder.name)).row(0, named=True)
    assert row["geometry_ok"] and row["n_bad"] == 1
    assert "1 bad_geometry" in row["defects"] and victim.name in row["defects"]


def test_duplicate_instance_numbers_keep_every_file_once(one_study):
    root, table = one_study
    folder = _series_dir(root, table, SAGITTAL_T2)
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
    twin = files[5]
    _edit(twin, lambda ds: setattr(ds, "InstanceNumber", int(files[4].stem)))
    instances, series = _parse(root, table)
    rows = instances.filter(pl.col("series_id") == int(folder.name))
    assert rows["instance_number"].n_unique() == rows.height == len(files)
    assert set(rows["path"]) == {str(p) for p in files}
    # the file named by the number keeps it; the twin is keyed by its own file name
    keyed = dict(zip(rows["path"], rows["instance_number"]))
    assert keyed[str(files[4])] == int(files[4].stem) and keyed[str(twin)] == int(twin.stem)
    assert rows.filter(pl.col("path") == str(twin))["note"][0].startswith("InstanceNumber")
    row = series.filter(pl.col("series_id") == int(folder.name)).row(0, named=True)
    assert row["geometry_ok"] and row["n_renumbered"] == 1 and "keyed by file" in row["defects"]
    geometry = stack_geometries(instances, series)[int(folder.name)]
    assert len(set(geometry.instance_numbers.tolist())) == len(files)


def test_missing_instance_numbers_and_file_names_without_numbers(one_study):
    root, table = one_study
    folder = _series_dir(root, table, AXIAL_T2)
    for i, path in enumerate(sorted(folder.glob("*.dcm"))):
        _edit(path, lambda ds: delattr(ds, "InstanceNumber"))
        path.rename(folder / f"IM{i:04d}x.dcm")
    instances, series = _parse(root, table)
    rows = instances.filter(pl.col("series_id") == int(folder.name))
    assert rows["instance_number"].null_count() == 0 and rows["instance_number"].n_unique() == rows.height
    assert rows["dicom_instance_number"].null_count() == rows.height
    row = series.filter(pl.col("series_id") == int(folder.name)).row(0, named=True)
    assert row["geometry_ok"] and row["n_renumbered"] == rows.height
    assert sorted(row["instances_by_position"]) == sorted(rows["instance_number"].to_list())


def test_missing_rows_and_columns(one_study):
    root, table = one_study
    t1, t2 = _series_dir(root, table, SAGITTAL_T1), _series_dir(root, table, SAGITTAL_T2)
    _edit(sorted(t1.glob("*.dcm"))[0], lambda ds: delattr(ds, "Rows"))
    for path in t2.glob("*.dcm"):
        _edit(path, lambda ds: delattr(ds, "Columns"))
    instances, series = _parse(root, table)
    by_id = {r["series_id"]: r for r in series.iter_rows(named=True)}
    assert by_id[int(t1.name)]["geometry_ok"] and by_id[int(t1.name)]["n_bad"] == 1
    assert by_id[int(t1.name)]["rows"] is not None
    assert not by_id[int(t2.name)]["geometry_ok"]
    assert "bad_header" in by_id[int(t2.name)]["geometry_error"]
    assert (instances.filter(pl.col("series_id") == int(t2.name))["status"] == "bad_header").all()


def test_deflated_files_are_not_reported_truncated(one_study):
    root, table = one_study
    folder = _series_dir(root, table, SAGITTAL_T1)
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    instances, _ = _parse(root, table)
    rows = instances.filter(pl.col("series_id") == int(folder.name))
    assert (rows["status"] == "ok").all(), rows["error"][0]
    assert (rows["transfer_syntax"] == DeflatedExplicitVRLittleEndian).all()


def test_single_slice_sagittal_series_do_not_crash_the_cross_reference(tiny_dataset, one_study):
    dataset, _ = tiny_dataset
    root, table = one_study
    coordinates = read_coordinates(dataset / "train_label_coordinates.csv").filter(
        pl.col("study_id") == table["study_id"][0])
    for description in (SAGITTAL_T1, SAGITTAL_T2):  # one file left; every point on it
        folder = _series_dir(root, table, description)
        kept = min(coordinates.filter(pl.col("series_id") == int(folder.name))["instance_number"])
        for path in folder.glob("*.dcm"):
            if int(path.stem) != kept:
                path.unlink()
        coordinates = coordinates.with_columns(instance_number=pl.when(
            pl.col("series_id") == int(folder.name)).then(kept).otherwise(pl.col("instance_number")))
    instances, series = _parse(root, table)
    geometries = stack_geometries(instances, series)
    points = level_points(annotation_points(coordinates, geometries), geometries)
    xref = axial_cross_reference(points, series, geometries)
    assert points.height > 0 and np.isfinite(points.select("x_mm", "y_mm", "z_mm").to_numpy()).all()
    assert xref.height > 0
    assert "a single usable slice" in series.filter(pl.col("series_description") == SAGITTAL_T1)["defects"][0]


def test_a_corrupt_cache_entry_is_parsed_again(one_study, tmp_path):
    root, table = one_study
    study_dir = root / str(table["study_id"][0])
    first = parse_study(study_dir, table["series_id"].to_list(), tmp_path / "cache")
    cache = tmp_path / "cache" / f"{study_dir.name}.parquet"
    cache.write_bytes(cache.read_bytes()[:100])  # a job killed while writing, before this fix
    again = parse_study(study_dir, table["series_id"].to_list(), tmp_path / "cache")
    assert again.equals(first)
    assert parse_study(study_dir, table["series_id"].to_list(), tmp_path / "cache").equals(first)
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_cache_is_keyed_on_the_parsing_code(one_study, tmp_path, monkeypatch):
    import spinepipe.metadata as metadata

    root, table = one_study
    study_dir = root / str(table["study_id"][0])
    parse_study(study_dir, table["series_id"].to_list(), tmp_path / "cache")
    monkeypatch.setattr(metadata, "CODE_FINGERPRINT", "other code")
    calls = []
    original = metadata.read_instance_header
    monkeypatch.setattr(metadata, "read_instance_header", lambda *a: calls.append(a) or original(*a))
    parse_study(study_dir, table["series_id"].to_list(), tmp_path / "cache")
    assert calls  # other code: the entry is not trusted
