"""Crops: geometry of the 2.5D views against known 3D points, the cache and its statuses."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from spinepipe.crops.build import build_crops, crop_summary
from spinepipe.crops.extract import CropSpec, crop_view
from spinepipe.crops.views import VIEWS
from spinepipe.dataset import read_coordinates, read_series_descriptions
from spinepipe.geometry import StackGeometry
from spinepipe.metadata import parse_instances, summarize_series

SPEC = CropSpec(size=32, margin=0, slices=1, extra_slices=1, mode="mm", window_mm=32.0,
                window_ratio=0.3, fill="zeros")


def sagittal_stack(spacing: float = 1.0, size: int = 100, flip_rows: bool = False,
                   reverse: bool = False) -> StackGeometry:
    """Seven sagittal slices at x = -9 .. 9 mm; rows point posterior (or anterior), columns
    inferior; the same 100 mm field of view at any pixel spacing."""
    xs = np.arange(-9, 10, 3.0)
    if reverse:
        xs = xs[::-1]
    row_dir = np.array([0.0, -1.0, 0.0]) if flip_rows else np.array([0.0, 1.0, 0.0])
    y0 = 50.0 if flip_rows else -50.0
    ipp = np.array([[x, y0, 50.0] for x in xs])
    iop = np.tile(np.concatenate([row_dir, [0.0, 0.0, -1.0]]), (len(xs), 1))
    n = int(round(size / spacing))
    return StackGeometry.from_arrays(np.arange(1, len(xs) + 1), ipp, iop, np.full((len(xs), 2), spacing),
                                     np.full(len(xs), n), np.full(len(xs), n))


def render(geometry: StackGeometry, dots: list[np.ndarray]) -> list[np.ndarray]:
    """Each slice with a Gaussian blob (sigma 1.5 mm) at every dot lying in its plane."""
    images = []
    for i in range(len(geometry)):
        n = int(geometry.rows[i])
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
        image = np.zeros((n, n), dtype=np.float32)
        for dot in dots:
            x, y = geometry.to_pixel(i, dot)
            if abs(geometry.distances(dot)[i]) < 0.5:
                r2 = ((xx - x) ** 2 + (yy - y) ** 2) * geometry.pixel_spacing[i, 0] ** 2
                image += np.exp(-r2 / (2 * 1.5**2)).astype(np.float32)
        images.append(image)
    return images


def peak(image: np.ndarray) -> tuple[float, float]:
    w = np.clip(image.astype(np.float64), 0, None)
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def target_and_pixel(geometry: StackGeometry, point: np.ndarray) -> tuple[int, float, float]:
    index, _ = geometry.nearest(point)
    return (index, *geometry.to_pixel(index, point))


@pytest.mark.parametrize("flip_rows,reverse", [(False, False), (True, False), (False, True), (True, True)])
def test_sagittal_views_are_canonical_whatever_the_scanner_orientation(flip_rows, reverse):
    geometry = sagittal_stack(flip_rows=flip_rows, reverse=reverse)
    centre = np.array([0.0, -20.0, 20.0])
    posterior = centre + [0.0, 8.0, 0.0]        # same slice, 8 mm posterior
    left = centre + [3.0, 0.0, -6.0]            # one slice to the patient's left, 6 mm inferior
    images = render(geometry, [posterior, left])
    index, x, y = target_and_pixel(geometry, centre)
    crop, mask = crop_view(images, geometry, index, x, y, VIEWS["sag_t1_left"], SPEC)
    assert crop.shape == (5, 32, 32) and mask.all()
    c = (32 - 1) / 2
    # middle slice: the posterior dot 8 mm (8 px at 1 mm/px) to the right of the centre
    px, py = peak(crop[2])
    assert abs(px - (c + 8)) < 0.3 and abs(py - c) < 0.3
    # slices ordered toward the patient's left for the left foramen: the left dot is next,
    # 6 mm below the centre
    px, py = peak(crop[3])
    assert abs(px - c) < 0.3 and abs(py - (c + 6)) < 0.3
    # the right foramen's view is mirrored: slices run toward the patient's right
    mirrored, _ = crop_view(images, geometry, index, x, y, VIEWS["sag_t1_right"], SPEC)
    assert np.allclose(mirrored[::-1], crop, atol=1e-3)


def test_millimetre_windows_do_not_depend_on_pixel_spacing():
    centre = np.array([0.0, -20.0, 20.0])
    dots = [centre + [0.0, 5.0, -4.0]]
    crops = []
    for spacing in (0.5, 1.25):
        geometry = sagittal_stack(spacing=spacing)
        index, x, y = target_and_pixel(geometry, centre)
        crop, _ = crop_view(render(geometry, dots), geometry, index, x, y, VIEWS["sag_t2_canal"], SPEC)
        crops.append(peak(crop[2].astype(np.float32)))
    assert np.allclose(crops[0], crops[1], atol=0.35)
    c = (32 - 1) / 2
    assert np.allclose(crops[0], (c + 5, c + 4), atol=0.35)
    # the image-ratio mode, kept for comparison, does depend on the field of view
    ratio = CropSpec(**{**SPEC.__dict__, "mode": "ratio", "window_ratio": 0.64})
    geometry = sagittal_stack(spacing=1.0, size=50)  # half the field of view
    index, x, y = target_and_pixel(geometry, centre)
    crop, _ = crop_view(render(geometry, dots), geometry, index, x, y, VIEWS["sag_t2_canal"], ratio)
    px, _ = peak(crop[2].astype(np.float32))
    assert abs(px - (c + 5 * 32 / (0.64 * 50))) < 0.4


def test_slices_beyond_the_stack_are_masked_and_filled():
    geometry = sagittal_stack()
    images = render(geometry, [])
    images = [im + 1.0 for im in images]
    edge = len(geometry) - 1 if geometry.normals[0] @ [1, 0, 0] > 0 else 0  # the leftmost slice
    spec = CropSpec(**{**SPEC.__dict__, "extra_slices": 2})
    crop, mask = crop_view(images, geometry, edge, 50.0, 50.0, VIEWS["sag_t1_left"], spec)
    assert mask.tolist() == [True, True, True, True, False, False, False]
    assert (crop[~mask] == 0).all() and (crop[mask] > 0.5).all()
    filled, _ = crop_view(images, geometry, edge, 50.0, 50.0, VIEWS["sag_t1_left"],
                          CropSpec(**{**spec.__dict__, "fill": "nearest"}))
    assert np.array_equal(filled[4], filled[3])


CROP_CFG = {"size": 24, "margin": 2, "slices": 1, "extra_slices": 1, "mode": "mm", "fill": "zeros",
            "window_mm": {"spinal": {"sagittal_t2": 56, "axial_t2": 64},
                          "foraminal": {"sagittal_t1": 48}, "subarticular": {"axial_t2": 48, "sagittal_t2": 48}},
            "window_ratio": {"spinal": {"sagittal_t2": 0.2, "axial_t2": 0.35},
                             "foraminal": {"sagittal_t1": 0.18}, "subarticular": {"axial_t2": 0.27, "sagittal_t2": 0.17}}}


@pytest.mark.parametrize("reverse", [False, True])
def test_recess_views_move_from_the_canal_toward_their_side(reverse):
    from spinepipe.crops.build import plan_crops

    geometry = sagittal_stack(reverse=reverse)            # slices at x = -9 .. 9 mm, 3 mm apart
    canal = np.array([0.0, -20.0, 20.0])
    index, x, y = target_and_pixel(geometry, canal)
    points = pl.DataFrame({"study_id": [1], "series_id": [10], "instance_number":
                           [int(geometry.instance_numbers[index])], "condition": ["Spinal Canal Stenosis"],
                           "level": ["L1/L2"], "x": [x], "y": [y], "series_description": ["Sagittal T2/STIR"],
                           "source": ["annotated"]})
    series = pl.DataFrame({"study_id": [1], "series_id": [10], "series_description": ["Sagittal T2/STIR"]})
    plans = {p["view"]: p for p in plan_crops([1], points, series, {10: geometry}) if p["level"] == "l1_l2"}
    # 10 mm toward the patient's left (+x in LPS) is the slice at x = 9, toward the right x = -9
    for view, expected_x in (("sag_t2_left", 9.0), ("sag_t2_right", -9.0)):
        plan = plans[view]
        assert plan["status"] == "ok"
        assert geometry.ipp[plan["slice_index"], 0] == expected_x
        assert np.allclose(geometry.to_patient(plan["slice_index"], plan["x"], plan["y"])[1:], canal[1:])
    assert plans["sag_t2_canal"]["slice_index"] == index
    # a stack that ends short of the recess: the view says so instead of cutting the edge slice
    narrow = StackGeometry.from_arrays(geometry.instance_numbers[2:5], geometry.ipp[2:5], np.tile(
        np.concatenate([geometry.row_dir[0], geometry.col_dir[0]]), (3, 1)), geometry.pixel_spacing[2:5],
        geometry.rows[2:5], geometry.columns[2:5])
    plans = {p["view"]: p for p in plan_crops([1], points, series, {10: narrow}) if p["level"] == "l1_l2"}
    assert plans["sag_t2_left"]["status"] == plans["sag_t2_right"]["status"] == "beyond_stack"
    assert plans["sag_t2_canal"]["status"] == "ok"


def crops_from_annotations(dataset, array_path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The crop index of every train study of a synthetic dataset, cut around its annotated
    coordinates into ``array_path``, and its series table."""
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    instances = parse_instances(dataset / "train_images", table)
    series = summarize_series(instances, table)
    coordinates = read_coordinates(dataset / "train_label_coordinates.csv").join(
        table.select("series_id", "series_description"), on="series_id").with_columns(
        source=pl.lit("annotated"))
    studies = sorted(table["study_id"].unique().to_list())
    return build_crops(studies, coordinates, instances, series, CROP_CFG, array_path), series


def test_cache_has_a_row_per_view_and_says_why_one_is_missing(quirky_dataset, tmp_path):
    dataset, _ = quirky_dataset
    index, series = crops_from_annotations(dataset, tmp_path / "crops.npy")
    studies = index["study_id"].unique().to_list()
    assert index.height == len(studies) * 5 * len(VIEWS)
    array = np.load(tmp_path / "crops.npy", mmap_mode="r")
    assert array.shape == (index.height, 5, 28, 28) and array.dtype == np.float16
    ok = index.filter(pl.col("status") == "ok")
    assert ok.height > 0.6 * index.height
    for r in ok.head(20).iter_rows(named=True):
        mask = np.array(r["slice_mask"])
        assert mask[2] and np.abs(array[r["row"], 2]).max() > 0  # the target slice has content
    for r in index.filter(pl.col("status") != "ok").iter_rows(named=True):
        assert not any(r["slice_mask"]) and not np.abs(array[r["row"]]).any()
    # the quirky dataset drops whole series: their views are reported, not crashed on
    quirks = pl.read_csv(dataset / "quirks.csv")
    dropped = quirks.filter((pl.col("quirk") == "missing_series") & (pl.col("split") == "train"))
    assert dropped.height > 0, "the quirky dataset dropped no train series: nothing to check"
    for study_id, description in dropped.select("study_id", "series_description").iter_rows():
        views = [view.name for view in VIEWS.values() if view.series_description == description]
        rows = index.filter((pl.col("study_id") == study_id) & pl.col("view").is_in(views))
        assert rows.height == 5 * len(views), (study_id, description, rows)
        assert (rows["status"] == "no_point").all(), (study_id, description, rows["status"])
    summary = crop_summary(index)
    assert summary["n_crops"] == index.height
    assert summary["missing_views"] == (index["status"] != "ok").sum()
