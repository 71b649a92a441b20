"""Geometry: known transforms, ordering by position, left/right, cross-reference vs truth."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from spinepipe.dataset import read_coordinates, read_series_descriptions
from spinepipe.geometry import SlicePlane, StackGeometry
from spinepipe.geometry_eval import evaluate_geometry
from spinepipe.metadata import parse_instances, summarize_series
from spinepipe.xref import (
    annotation_points,
    axial_cross_reference,
    level_points,
    select_sagittal_slices,
    slice_reader,
    stack_geometries,
)


def test_pixel_to_patient_follows_the_dicom_formula():
    plane = SlicePlane.from_dicom([10, 20, 30], [0, 1, 0, 0, 0, -1], [0.5, 0.8])
    np.testing.assert_allclose(plane.to_patient(2, 3), [10, 20 + 2 * 0.8, 30 - 3 * 0.5])
    x, y, d = plane.to_pixel(np.array([10 - 4.0, 20 + 2 * 0.8, 30 - 3 * 0.5]))
    assert (x, y) == pytest.approx((2, 3)) and d == pytest.approx(4.0)  # normal is -x
    points = plane.to_patient(np.array([[0.5, 7.0]]), np.array([[3.25, 1.0]]))
    back = plane.to_pixel(points)
    np.testing.assert_allclose(back[0], [[0.5, 7.0]])
    np.testing.assert_allclose(back[1], [[3.25, 1.0]])


def _stack(xs, normal_sign: float, instances):
    iop = [0, 1, 0, 0, 0, -1] if normal_sign < 0 else [0, -1, 0, 0, 0, -1]
    return StackGeometry.from_arrays(instances, [[x, 0, 0] for x in xs], [iop] * len(xs),
                                     [[1, 1]] * len(xs), [64] * len(xs), [64] * len(xs))


@pytest.mark.parametrize("normal_sign", [-1.0, 1.0])
def test_order_and_sides_come_from_positions_not_instance_numbers(normal_sign):
    xs = [9.0, -3.0, 3.0, -9.0, 0.0]
    stack = _stack(xs, normal_sign, instances=[1, 2, 3, 4, 5])
    offsets = stack.left_offsets(np.zeros(3))
    # LPS: +x is the patient's left, whatever the normal's sign or the instance order
    by_instance = dict(zip(stack.instance_numbers.tolist(), offsets.tolist()))
    assert by_instance == pytest.approx({1: 9.0, 2: -3.0, 3: 3.0, 4: -9.0, 5: 0.0})
    choice = select_sagittal_slices(stack, np.zeros(3), foramen_offset_mm=8.0)
    assert choice["left"] == 1 and choice["right"] == 4 and choice["mid"] == [5]
    assert np.all(np.diff(stack.ipp @ stack.normals[0]) > 0)  # sorted along the normal


@pytest.fixture(scope="module")
def quirky_geometry(quirky_dataset):
    dataset, _ = quirky_dataset
    table = read_series_descriptions(dataset / "train_series_descriptions.csv")
    instances = parse_instances(dataset / "train_images", table)
    series = summarize_series(instances, table)
    geometries = stack_geometries(instances, series)
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    points = level_points(annotation_points(coords, geometries), geometries)
    xref = axial_cross_reference(points, series, geometries, slice_reader(instances))
    return dataset, series, geometries, points, xref


def test_cross_reference_against_ground_truth(quirky_geometry):
    dataset, series, geometries, _, xref = quirky_geometry
    centers = pl.read_csv(dataset / "level_centers.csv").filter(pl.col("split") == "train")
    quirks = pl.read_csv(dataset / "quirks.csv").filter(pl.col("split") == "train")
    result = evaluate_geometry(series, geometries, xref, centers, quirks, foramen_offset_mm=21.0)
    sides, clean = result["sides"], result["axial_clean_annotations"]
    print(f"\nsagittal series {sides['sagittal_series']}: side accuracy "
          f"{sides['sagittal_side_accuracy']:.3f} over {sides['sagittal_slices_checked']} slices, "
          f"foramen slices on the right side {sides['foramen_slice_side_accuracy']:.3f}")
    print(f"axial ({clean['axial_pairs']} study-level-series): nearest "
          f"{clean['axial_nearest_slice_rate']:.3f}, within one {clean['axial_within_one_slice_rate']:.3f}, "
          f"in-plane error px median {clean['inplane_error_px_median']:.2f} "
          f"p95 {clean['inplane_error_px_p95']:.2f} max {clean['inplane_error_px_max']:.2f}")
    assert sides["sagittal_side_accuracy"] == 1.0 and sides["sagittal_series_all_sides_correct"] == 1.0
    assert sides["foramen_slice_side_accuracy"] == 1.0
    assert clean["axial_pairs"] >= 30
    assert clean["axial_nearest_slice_rate"] >= 0.99
    assert clean["axial_within_one_slice_rate"] == 1.0
    assert clean["inplane_error_px_median"] < 0.5
    assert clean["inplane_error_px_p95"] < 2.0


def test_cross_reference_covers_every_axial_series(quirky_geometry):
    _, series, _, points, xref = quirky_geometry
    axial = series.filter(pl.col("series_description") == "Axial T2")
    expected = points.join(axial.select("study_id", "series_id"), on="study_id").height
    assert xref.height == expected
    assert xref["in_image"].all()
    two = axial.group_by("study_id").len().filter(pl.col("len") == 2)["study_id"]
    assert two.len() > 0
    assert xref.filter(pl.col("study_id").is_in(two.to_list())).group_by("study_id", "level").len()["len"].min() == 2


def test_a_study_without_axial_series_gets_no_rows_and_no_error(quirky_geometry):
    _, series, geometries, points, _ = quirky_geometry
    without_axial = series.filter(pl.col("series_description") != "Axial T2")
    assert axial_cross_reference(points, without_axial, geometries).height == 0
