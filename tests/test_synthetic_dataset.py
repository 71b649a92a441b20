"""The synthetic dataset: files, schemas, geometry against ground truth, quirks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
import SimpleITK as sitk

from spinepipe.constants import (
    AXIAL_T2,
    CONDITION_FAMILY,
    CONDITION_NAMES,
    CONDITION_SIDE,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    SAGITTAL_T1,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
)
from spinepipe.dataset import read_coordinates, read_labels, read_series_descriptions
from spinepipe.geometry import SlicePlane, slice_normal

CONDITION_KEYS = {name: key for key, name in CONDITION_NAMES.items()}
LEVEL_KEYS = {name: key for key, name in LEVEL_NAMES.items()}


def headers(dataset: Path, split: str) -> pl.DataFrame:
    """One row per DICOM file with its geometry (header-only reads)."""
    rows = []
    for path in sorted((dataset / f"{split}_images").glob("*/*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = [float(v) for v in ds.ImageOrientationPatient]
        rows.append({
            "study_id": int(path.parts[-3]), "series_id": int(path.parts[-2]),
            "file_stem": int(path.stem), "instance_number": int(ds.InstanceNumber),
            "description": str(ds.SeriesDescription), "position": str(ds.PatientPosition),
            "ipp": [float(v) for v in ds.ImagePositionPatient], "iop": iop,
            "pixel_spacing": [float(v) for v in ds.PixelSpacing],
            "spacing": float(ds.SpacingBetweenSlices), "rows": int(ds.Rows),
            "columns": int(ds.Columns), "path": str(path)})
    return pl.DataFrame(rows)


def truth_point(centers: pl.DataFrame, study_id: int, condition: str, level: str) -> np.ndarray:
    row = centers.filter((pl.col("study_id") == study_id) & (pl.col("level") == level)).row(0, named=True)
    centre = np.array([row["x_mm"], row["y_mm"], row["z_mm"]])
    family, side = CONDITION_FAMILY[condition], CONDITION_SIDE[condition]
    if family == "spinal":
        return centre
    lateral = np.array([row["lateral_x"], row["lateral_y"], row["lateral_z"]])
    offset = row["foramen_offset_mm"] if family == "foraminal" else row["recess_offset_mm"]
    return centre + (1.0 if side == "left" else -1.0) * offset * lateral


def test_every_dicom_reads_with_pydicom_and_simpleitk(quirky_dataset):
    dataset, _ = quirky_dataset
    files = sorted(dataset.glob("*_images/*/*/*.dcm"))
    assert len(files) > 100
    for path in files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16
        assert int(pixels.max()) < 2 ** ds.BitsStored and pixels.max() > 0
        assert int(path.stem) == ds.InstanceNumber
        assert ds.SeriesDescription in SERIES_DESCRIPTIONS
        assert ds.PatientPosition in ("HFS", "FFS") and ds.Modality == "MR"
        for tag in ("SliceThickness", "SpacingBetweenSlices", "SliceLocation",
                    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert tag in ds, f"{path} lacks {tag}"
        image = sitk.ReadImage(str(path))
        assert image.GetSize()[:2] == (ds.Columns, ds.Rows)
        np.testing.assert_allclose(image.GetOrigin(), [float(v) for v in ds.ImagePositionPatient],
                                   atol=1e-3)
        direction = np.array(image.GetDirection()).reshape(3, 3)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-4)
        np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], pixels)


def test_csv_schemas_and_value_sets(tiny_dataset):
    dataset, config = tiny_dataset
    syn = config["synthetic"]
    train = read_labels(dataset / "train.csv")
    assert train.columns == ["study_id", *LABEL_COLUMNS]
    assert train.height == syn["n_train"] and train["study_id"].is_unique().all()
    values = set(train.unpivot(index="study_id")["value"].drop_nulls().unique().to_list())
    assert values <= set(SEVERITIES)
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    assert coords.columns == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert set(coords["condition"]) <= set(CONDITION_NAMES.values())
    assert set(coords["level"]) <= set(LEVEL_NAMES.values())
    for split in ("train", "test"):
        series = read_series_descriptions(dataset / f"{split}_series_descriptions.csv")
        assert series.columns == ["study_id", "series_id", "series_description"]
        assert set(series["series_description"]) <= set(SERIES_DESCRIPTIONS)
        for study_id, series_id in series.select("study_id", "series_id").iter_rows():
            assert any((dataset / f"{split}_images" / str(study_id) / str(series_id)).glob("*.dcm"))
    for study_id, series_id, instance in coords.select("study_id", "series_id", "instance_number").iter_rows():
        assert (dataset / "train_images" / str(study_id) / str(series_id) / f"{instance}.dcm").is_file()
    test_labels = read_labels(dataset / "test_labels.csv")
    assert test_labels.height == syn["n_test"]
    assert not set(test_labels["study_id"]) & set(train["study_id"])
    sample = pl.read_csv(dataset / "sample_submission.csv")
    assert sample.columns == ["row_id", "normal_mild", "moderate", "severe"]
    expected = [f"{s}_{c}" for s in sorted(test_labels["study_id"]) for c in LABEL_COLUMNS]
    assert sample["row_id"].to_list() == expected
    centers = pl.read_csv(dataset / "level_centers.csv")
    assert centers.columns[:5] == ["study_id", "level", "x_mm", "y_mm", "z_mm"]
    assert centers.height == 5 * (syn["n_train"] + syn["n_test"])


def test_annotated_points_map_to_ground_truth(quirky_dataset):
    dataset, _ = quirky_dataset
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    centers = pl.read_csv(dataset / "level_centers.csv")
    off = set(pl.read_csv(dataset / "quirks.csv").filter(pl.col("quirk").str.starts_with("coordinate_off"))
              .select(pl.concat_str("study_id", "quirk", separator=":"))["study_id"].to_list())
    head = headers(dataset, "train")
    checked = shifted = 0
    for row in coords.iter_rows(named=True):
        condition, level = CONDITION_KEYS[row["condition"]], LEVEL_KEYS[row["level"]]
        series = head.filter((pl.col("study_id") == row["study_id"]) & (pl.col("series_id") == row["series_id"]))
        target = series.filter(pl.col("instance_number") == row["instance_number"]).row(0, named=True)
        plane = SlicePlane.from_dicom(target["ipp"], target["iop"], target["pixel_spacing"])
        truth = truth_point(centers, row["study_id"], condition, LEVEL_NAMES[level])
        x, y, out_of_plane = plane.to_pixel(truth)
        # the annotated slice is the one nearest the true structure
        distances = [abs(SlicePlane.from_dicom(r["ipp"], r["iop"], r["pixel_spacing"]).to_pixel(truth)[2])
                     for r in series.iter_rows(named=True)]
        assert abs(out_of_plane) == pytest.approx(min(distances), abs=1e-6)
        assert abs(out_of_plane) <= target["spacing"] / 2 + 0.05
        error_px = np.hypot(x - row["x"], y - row["y"])
        if f"{row['study_id']}:coordinate_off:{condition}:{level}" in off:
            assert 1.9 < error_px < 5.1
            shifted += 1
        else:
            assert error_px < 0.02, (row, error_px)
            checked += 1
    assert checked > 100 and shifted > 0


def test_one_coordinate_per_present_series_and_label(quirky_dataset):
    dataset, _ = quirky_dataset
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    labels = read_labels(dataset / "train.csv").unpivot(index="study_id").drop_nulls("value")
    series = read_series_descriptions(dataset / "train_series_descriptions.csv")
    expected = 0
    family_series = {"spinal": "Sagittal T2/STIR", "foraminal": SAGITTAL_T1, "subarticular": AXIAL_T2}
    for study_id, column in labels.select("study_id", "variable").iter_rows():
        condition = column.rsplit("_", 2)[0]
        present = series.filter((pl.col("study_id") == study_id) & (
            pl.col("series_description") == family_series[CONDITION_FAMILY[condition]]))
        expected += present.height > 0
    assert coords.height == expected
    assert coords.select("study_id", "condition", "level").is_unique().all()


def test_left_right_follow_patient_coordinates(quirky_dataset):
    """Left foramina lie at larger LPS x than right ones, whatever the patient position."""
    dataset, _ = quirky_dataset
    coords = read_coordinates(dataset / "train_label_coordinates.csv").filter(
        pl.col("condition").str.contains("Foraminal"))
    head = headers(dataset, "train")
    mapped = {}
    for row in coords.iter_rows(named=True):
        target = head.filter((pl.col("series_id") == row["series_id"]) &
                             (pl.col("instance_number") == row["instance_number"])).row(0, named=True)
        plane = SlicePlane.from_dicom(target["ipp"], target["iop"], target["pixel_spacing"])
        side = "left" if row["condition"].startswith("Left") else "right"
        mapped[(row["study_id"], row["level"], side)] = plane.to_patient(row["x"], row["y"])
    pairs = [(k[0], k[1]) for k in mapped if k[2] == "left" and (k[0], k[1], "right") in mapped]
    assert len(pairs) > 20
    for study_id, level in pairs:
        assert mapped[(study_id, level, "left")][0] > mapped[(study_id, level, "right")][0] + 25


def test_instance_order_quirks_and_feet_first(quirky_dataset):
    dataset, _ = quirky_dataset
    head = headers(dataset, "train")
    quirks = pl.read_csv(dataset / "quirks.csv")
    reversed_ids = set(quirks.filter(pl.col("quirk") == "reversed_order")["series_id"].to_list())
    ffs_studies = set(quirks.filter(pl.col("quirk") == "feet_first")["study_id"].to_list())
    assert reversed_ids and ffs_studies
    for (study_id, series_id), series in head.group_by("study_id", "series_id"):
        ipp = np.array(series["ipp"].to_list())
        instance = series["instance_number"].to_numpy()
        axial = series["description"][0] == AXIAL_T2
        # default order: axial superior -> inferior, sagittal patient left -> right
        coordinate = ipp[:, 2] if axial else ipp[:, 0]
        runs_down = np.corrcoef(instance, coordinate)[0, 1] < 0
        flipped = (series_id in reversed_ids) != (study_id in ffs_studies)
        assert runs_down != flipped, (study_id, series_id)
        assert (series["position"] == ("FFS" if study_id in ffs_studies else "HFS")).all()
        if axial:
            row_dir = np.array(series["iop"][0][:3])
            # feet-first axial images put the patient's right on the image's right
            assert (row_dir[0] < -0.9) == (study_id in ffs_studies)


def test_axial_series_cover_every_level(quirky_dataset):
    dataset, config = quirky_dataset
    head = headers(dataset, "train").filter(pl.col("description") == AXIAL_T2)
    centers = pl.read_csv(dataset / "level_centers.csv")
    modes = pl.read_csv(dataset / "quirks.csv").filter(
        pl.col("quirk").str.starts_with("axial_") & (pl.col("split") == "train"))
    assert set(modes["quirk"]) == {"axial_blocks", "axial_stack"}
    for series_id, mode, study_id in modes.select("series_id", "quirk", "study_id").iter_rows():
        series = head.filter(pl.col("series_id") == series_id)
        planes = [SlicePlane.from_dicom(r["ipp"], r["iop"], r["pixel_spacing"]) for r in series.iter_rows(named=True)]
        for level in LEVEL_NAMES.values():
            c = centers.filter((pl.col("study_id") == study_id) & (pl.col("level") == level)).row(0, named=True)
            centre = np.array([c["x_mm"], c["y_mm"], c["z_mm"]])
            disc_normal = np.array([c["normal_x"], c["normal_y"], c["normal_z"]])
            distances = [abs(p.to_pixel(centre)[2]) for p in planes]
            nearest = planes[int(np.argmin(distances))]
            assert min(distances) <= series["spacing"][0] / 2 + 0.5 * series["spacing"][0]
            x, y, _ = nearest.to_pixel(centre)
            assert 0 <= x < series["columns"][0] and 0 <= y < series["rows"][0]
            if mode == "axial_blocks":  # tilted to follow the disc, within the jitter
                angle = np.degrees(np.arccos(min(1.0, abs(nearest.normal @ disc_normal))))
                assert angle < 3.5


def test_sagittal_stack_geometry(tiny_dataset):
    dataset, config = tiny_dataset
    sag = config["synthetic"]["sagittal"]
    head = headers(dataset, "train").filter(pl.col("description") != AXIAL_T2)
    assert head["series_id"].n_unique() >= config["synthetic"]["n_train"]  # not vacuous
    for _, series in head.group_by("series_id"):
        assert sag["slices"][0] <= series.height <= sag["slices"][1]
        assert series["rows"][0] in sag["matrix"]
        normal = slice_normal(series["iop"][0])
        assert abs(normal[0]) > 0.99
        positions = np.sort(np.array(series["ipp"].to_list()) @ normal)
        np.testing.assert_allclose(np.diff(positions), series["spacing"][0], atol=0.01)
        assert sag["spacing_mm"][0] <= series["spacing"][0] <= sag["spacing_mm"][1]


def test_quirks_show_in_the_data(quirky_dataset):
    dataset, _ = quirky_dataset
    quirks = pl.read_csv(dataset / "quirks.csv")
    kinds = {q.split(":")[0] for q in quirks["quirk"]}
    assert {"reversed_order", "instance_offset", "instance_jumps", "missing_series",
            "feet_first", "coordinate_off", "axial_blocks", "axial_stack"} <= kinds
    series = pl.concat([read_series_descriptions(dataset / f"{s}_series_descriptions.csv")
                        for s in ("train", "test")])
    for study_id, description in quirks.filter(pl.col("quirk") == "missing_series").select(
            "study_id", "series_description").iter_rows():
        assert series.filter((pl.col("study_id") == study_id) &
                             (pl.col("series_description") == description)).height == 0
    axial_counts = series.filter(pl.col("series_description") == AXIAL_T2).group_by("study_id").len()
    assert axial_counts["len"].max() == 2
    head = headers(dataset, "train")
    in_train = quirks.filter((pl.col("split") == "train")
                             & pl.col("series_id").is_in(head["series_id"].unique().implode()))
    offsets = in_train.filter(pl.col("quirk") == "instance_offset")["series_id"].to_list()
    jumps = in_train.filter(pl.col("quirk") == "instance_jumps")["series_id"].to_list()
    assert offsets and jumps, "no train series with an instance offset or jumps: nothing checked"
    for s in offsets:
        assert head.filter(pl.col("series_id") == s)["instance_number"].min() > 1, s
    for s in jumps:
        numbers = np.sort(head.filter(pl.col("series_id") == s)["instance_number"].to_numpy())
        assert np.diff(numbers).max() > 1, s
    train = read_labels(dataset / "train.csv")
    assert train.select(pl.sum_horizontal(pl.all().exclude("study_id").is_null())).sum().item() > 0
