"""Pixel decoding: every common transfer syntax decodes to a native float32 2D image (bit for
bit when lossless), and one slice that cannot be decoded never drops its series from the
localizer stacks or the crops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from dicom_encodings import SYNTAXES, reencode, reencode_series
from pydicom import uid
from pydicom.encaps import encapsulate

from spinepipe.crops.build import build_crops, crop_summary
from spinepipe.crops.views import VIEWS
from spinepipe.dataset import read_coordinates, read_series_descriptions
from spinepipe.dicom_io import read_series
from spinepipe.localize.stacks import StackCache, build_stacks
from spinepipe.metadata import parse_instances, summarize_series
from spinepipe.pixels import SliceDecodeError, decode_slice, decode_slices
from spinepipe.xref import stack_geometries

CROP_CFG = {"size": 24, "margin": 2, "slices": 1, "extra_slices": 1, "mode": "mm", "fill": "zeros",
            "window_mm": {"spinal": {"sagittal_t2": 56, "axial_t2": 64},
                          "foraminal": {"sagittal_t1": 48}, "subarticular": {"axial_t2": 48, "sagittal_t2": 48}},
            "window_ratio": {"spinal": {"sagittal_t2": 0.2, "axial_t2": 0.35},
                             "foraminal": {"sagittal_t1": 0.18}, "subarticular": {"axial_t2": 0.27, "sagittal_t2": 0.17}}}
GEOMETRY_TAGS = ("SOPInstanceUID", "SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient",
                 "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns")


def _first_study(dataset: Path) -> tuple[int, pl.DataFrame]:
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    study = sorted(table["study_id"].unique().to_list())[0]
    return study, table.filter(pl.col("study_id") == study)


def _series_folder(dataset: Path, description: str) -> Path:
    study, table = _first_study(dataset)
    series_id = table.filter(pl.col("series_description") == description)["series_id"][0]
    return dataset / "train_images" / str(study) / str(series_id)


@pytest.fixture(scope="module")
def source(tiny_dataset) -> Path:
    """One synthetic slice (uncompressed 16-bit MONOCHROME2) from the middle of a series."""
    dataset, _ = tiny_dataset
    files = sorted(_series_folder(dataset, "Sagittal T2/STIR").glob("*.dcm"))
    return files[len(files) // 2]


@pytest.fixture(scope="module")
def encoded(source, tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    out = tmp_path_factory.mktemp("encoded")
    return {name: (out / f"{name}.dcm", reencode(source, out / f"{name}.dcm", syntax))
            for name, (syntax, _) in SYNTAXES.items()}


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_every_transfer_syntax_decodes_to_native_float32(name, source, encoded):
    syntax, lossless = SYNTAXES[name]
    path, reference = encoded[name]
    ds, original = pydicom.dcmread(path), pydicom.dcmread(source)
    # the helper wrote what it says, and kept the identity and geometry of the slice
    assert ds.file_meta.TransferSyntaxUID == syntax
    for tag in GEOMETRY_TAGS:
        assert ds.get(tag) == original.get(tag), tag
    image = decode_slice(path)
    assert image.dtype == np.float32 and image.dtype.isnative
    assert image.shape == (original.Rows, original.Columns) == reference.shape
    if lossless:
        assert np.array_equal(image, reference.astype(np.float32))
    else:
        value_range = float(reference.max()) - float(reference.min())
        error = np.abs(image - reference.astype(np.float32))
        assert error.mean() < 0.05 * value_range
        if syntax == uid.JPEGLSNearLossless:  # near-lossless: bounded error per pixel
            assert error.max() <= 2


def test_big_endian_pixels_come_back_native(encoded):
    path, reference = encoded["explicit_vr_be"]
    raw = pydicom.dcmread(path).pixel_array
    assert raw.dtype == np.dtype(">u2") and np.array_equal(raw, reference)
    image = decode_slice(path)
    assert image.dtype == np.dtype("=f4") and np.array_equal(image, reference)


def test_deflated_series_is_read(tiny_dataset, tmp_path):
    """Deflated Explicit VR LE: the whole dataset after the meta header is zlib-compressed
    (the metadata header check still calls such files truncated; decoding must not)."""
    dataset, _ = tiny_dataset
    folder = _series_folder(dataset, "Sagittal T1")
    references = reencode_series(folder, tmp_path / "deflated", uid.DeflatedExplicitVRLittleEndian)
    first = sorted((tmp_path / "deflated").glob("*.dcm"))[0]
    assert first.read_bytes() != (folder / first.name).read_bytes()
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian
    for name, reference in references.items():
        assert np.array_equal(decode_slice(tmp_path / "deflated" / name), reference)
    volume, plain = read_series(tmp_path / "deflated"), read_series(folder)
    assert volume.instance_numbers == plain.instance_numbers and not volume.lost_files
    assert all(np.array_equal(a, b) for a, b in zip(volume.pixels, plain.pixels))


def test_rescale_slope_and_intercept_are_applied(source, tmp_path):
    ds = pydicom.dcmread(source)
    stored = ds.pixel_array.astype(np.float32)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-5"
    ds.save_as(tmp_path / "rescaled.dcm", enforce_file_format=True)
    assert np.array_equal(decode_slice(tmp_path / "rescaled.dcm"), stored * 2 - 5)
    assert np.array_equal(decode_slice(source), stored)  # no rescale tags: stored values


def corrupt_pixels(path: Path) -> None:
    """Pixel data that no decoder accepts, in a file that passes the header check: JPEG-LS
    encapsulated (undefined length) fragment of invalid bytes."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7\x00\x0b" + bytes(range(200))])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_undecodable_slice_raises_an_error_naming_the_file(source, tmp_path):
    for bad, why in ((tmp_path / "garbage.dcm", None), (tmp_path / "jpegls.dcm", corrupt_pixels)):
        shutil.copy(source, bad)
        if why is None:
            bad.write_bytes(b"garbage")
        else:
            why(bad)
        with pytest.raises(SliceDecodeError, match=bad.name) as error:
            decode_slice(bad)
        assert error.value.path == bad and error.value.reason
    images, errors = decode_slices([source, tmp_path / "jpegls.dcm", source])
    assert images[1] is None and errors[1] and "JPEG-LS" in errors[1]
    assert images[0] is not None and errors[0] is None and errors[2] is None


def test_multi_frame_file_is_refused_clearly(source, tmp_path):
    ds = pydicom.dcmread(source)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    with pytest.raises(SliceDecodeError, match="multi-frame"):
        decode_slice(tmp_path / "multi.dcm")


# -- one bad slice in a series: the series is kept, only that slice is lost -----------------

def _one_study_copy(dataset: Path, out: Path) -> tuple[int, pl.DataFrame]:
    study, table = _first_study(dataset)
    shutil.copytree(dataset / "train_images" / str(study), out / "train_images" / str(study))
    return study, table


def _tables(root: Path, table: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    instances = parse_instances(root / "train_images", table)
    return instances, summarize_series(instances, table)


def _position_index(instances, series, series_id: int, instance_number: int) -> int:
    return stack_geometries(instances, series)[series_id].index_of(instance_number)


@pytest.fixture(scope="module")
def damaged_study(tiny_dataset, tmp_path_factory):
    """A study copied twice: intact, and with two slices whose pixels cannot be decoded (a
    neighbour of the Sagittal T2 canal slice, and the Sagittal T1 left foramen slice itself),
    both passing the header check."""
    dataset, _ = tiny_dataset
    intact, damaged = tmp_path_factory.mktemp("intact"), tmp_path_factory.mktemp("damaged")
    study, table = _one_study_copy(dataset, intact)
    _one_study_copy(dataset, damaged)
    coordinates = read_coordinates(dataset / "train_label_coordinates.csv").filter(
        pl.col("study_id") == study).join(table.select("series_id", "series_description"),
                                          on="series_id").with_columns(source=pl.lit("annotated"))
    instances, series = _tables(intact, table)
    geometries = stack_geometries(instances, series)
    canal = coordinates.filter(pl.col("condition") == "Spinal Canal Stenosis").row(0, named=True)
    t2 = geometries[canal["series_id"]]
    target = t2.index_of(canal["instance_number"])
    neighbour = target + 1 if target + 1 < len(t2) else target - 1
    foramen = coordinates.filter(pl.col("condition") == "Left Neural Foraminal Narrowing").row(0, named=True)
    lost = {canal["series_id"]: int(t2.instance_numbers[neighbour]),
            foramen["series_id"]: int(foramen["instance_number"])}
    for series_id, number in lost.items():
        corrupt_pixels(damaged / "train_images" / str(study) / str(series_id) / f"{number}.dcm")
    return {"study": study, "table": table, "coordinates": coordinates, "lost": lost,
            "intact": (intact, *_tables(intact, table)), "damaged": (damaged, *_tables(damaged, table))}


def test_damaged_files_pass_the_header_check(damaged_study):
    _, instances, _ = damaged_study["damaged"]
    for series_id, number in damaged_study["lost"].items():
        row = instances.filter((pl.col("series_id") == series_id) & (pl.col("instance_number") == number))
        assert row["status"].to_list() == ["ok"]


def test_stacks_keep_a_series_with_one_lost_slice(damaged_study, tmp_path):
    indices = {}
    for kind in ("intact", "damaged"):
        _, instances, series = damaged_study[kind]
        indices[kind] = build_stacks(instances, series, 64, tmp_path / kind / "stacks.npy")
    intact, damaged = StackCache(indices["intact"]), StackCache(indices["damaged"])
    _, instances, series = damaged_study["damaged"]
    assert (indices["damaged"]["status"] == "ok").all()
    for r in indices["damaged"].iter_rows(named=True):
        before, after = intact.get(r["series_id"]), damaged.get(r["series_id"])
        assert np.array_equal(before["instance_numbers"], after["instance_numbers"])
        number = damaged_study["lost"].get(r["series_id"])
        if number is None:
            assert r["lost_slices"] == 0 and r["error"] is None and after["slice_ok"].all()
            assert np.array_equal(before["images"], after["images"])
            continue
        lost = _position_index(instances, series, r["series_id"], number)
        assert r["lost_slices"] == 1 and r["n_slices"] == len(after["images"])
        assert r["error"].startswith(f"1 of {r['n_slices']} slices could not be decoded: {number}.dcm")
        assert np.flatnonzero(~after["slice_ok"]).tolist() == [lost]
        assert not after["images"][lost].any()
        kept = after["slice_ok"]
        # the other slices are the same images, up to the percentiles of one slice fewer
        assert np.abs(after["images"][kept].astype(np.float32)
                      - before["images"][kept].astype(np.float32)).max() < 0.03


def test_crops_keep_a_series_with_one_lost_slice(damaged_study, tmp_path):
    study, coordinates, lost = damaged_study["study"], damaged_study["coordinates"], damaged_study["lost"]
    results = {}
    for kind in ("intact", "damaged"):
        _, instances, series = damaged_study[kind]
        index = build_crops([study], coordinates, instances, series, CROP_CFG, tmp_path / f"{kind}.npy")
        results[kind] = (index, np.load(tmp_path / f"{kind}.npy"))
    (before, before_array), (after, after_array) = results["intact"], results["damaged"]
    _, instances, series = damaged_study["damaged"]
    geometries = stack_geometries(instances, series)
    assert before["status"].to_list().count("ok") > 0
    assert (before.select("row", "study_id", "level", "view").equals(after.select("row", "study_id", "level", "view")))
    half = (after["slice_mask"].list.len().max() - 1) // 2
    checked_masked = 0
    for b, a in zip(before.iter_rows(named=True), after.iter_rows(named=True)):
        if a["series_id"] not in lost:
            assert a == b | {"lost_slices": 0, "lost_reason": None}
            assert np.array_equal(before_array[a["row"]], after_array[a["row"]])
            continue
        if b["status"] != "ok":
            continue
        geometry = geometries[a["series_id"]]
        lost_index = geometry.index_of(lost[a["series_id"]])
        assert a["lost_slices"] == 1 and f"{lost[a['series_id']]}.dcm" in a["lost_reason"]
        if a["slice_index"] == lost_index:  # the target slice itself is lost
            assert a["status"] == "unreadable_slice"
            assert not any(a["slice_mask"]) and not after_array[a["row"]].any()
            continue
        assert a["status"] == "ok"
        view = VIEWS[a["view"]]
        direction = 1 if geometry.normals[a["slice_index"]] @ np.asarray(view.slice_axis) >= 0 else -1
        used = np.array([a["slice_index"] + direction * k for k in range(-half, half + 1)])
        expected = np.array(b["slice_mask"]) & (used != lost_index)
        assert a["slice_mask"] == expected.tolist()
        masked = np.array(b["slice_mask"]) & (used == lost_index)
        checked_masked += int(masked.any())
        assert not after_array[a["row"]][masked].any()
        keep = np.array(a["slice_mask"])
        diff = np.abs(after_array[a["row"]][keep].astype(np.float32)
                      - before_array[a["row"]][keep].astype(np.float32))
        assert diff.max() < 0.03  # same crops, percentiles from one slice fewer
    assert checked_masked > 0  # the canal neighbour was masked out of at least one crop
    assert (after["status"] == "unreadable_slice").sum() > 0  # the foramen target slice
    summary = crop_summary(after)
    assert summary["lost_slices"] == 2 and summary["series_with_lost_slices"] == 2
    assert summary["unreadable_target_slices"] == (after["status"] == "unreadable_slice").sum()
