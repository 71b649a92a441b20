"""Per-study QA sheet: patient sides from geometry, distances in patient space, masked crop
slices, and a sheet rendered from small synthetic inputs (no pipeline outputs needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from spinepipe.config import load_config
from spinepipe.constants import AXIAL_T2, CONDITIONS, LEVEL_NAMES, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from spinepipe.geometry import StackGeometry
from spinepipe.qa.montage import CROP_ROWS, GAP, crop_montage, crop_tiles, masked_pattern
from spinepipe.qa.orientation import patient_side_labels, sagittal_side_text
from spinepipe.qa.plan import plan_sheet
from spinepipe.qa.sheet import render_study_sheet
from spinepipe.qa.types import CropView, SeriesStack, StudyInputs

# the settings the pipeline passes (config.yaml), typed nowhere else
CONFIG = load_config(Path(__file__).resolve().parents[1] / "config.yaml")
FORAMEN_OFFSET_MM = CONFIG["geometry"]["foramen_offset_mm"]
DPI = CONFIG["qa"]["dpi"]

STUDY = 4242
T2, T1, AX = 11, 12, 13
N, SIZE = 16, 64                      # slices, pixels of the synthetic DICOM matrix
LEVEL_Z = {lv: 20.0 - 10.0 * k for k, lv in enumerate(LEVELS)}  # superior to inferior
CANAL_Y = 5.0                          # the canal, a little posterior of the origin
RECESS_X = 12.0                        # recesses at +/- this (LPS: + is the patient's left)


def _geometry(ipps, row_dir, col_dir, spacing=(1.0, 1.0), instances=None) -> StackGeometry:
    n = len(ipps)
    instances = list(range(1, n + 1)) if instances is None else instances
    iop = [list(row_dir) + list(col_dir)] * n
    return StackGeometry.from_arrays(instances, ipps, iop, [list(spacing)] * n, [SIZE] * n, [SIZE] * n)


def sagittal(step_mm: float, spacing=(1.0, 1.0)) -> StackGeometry:
    """Rows anterior -> posterior, columns superior -> inferior; normal toward the patient's
    right, so slice 0 (position order) is the most left. Instance numbers run backwards."""
    xs = [(k - (N - 1) / 2) * step_mm for k in range(N)]
    return _geometry([[x, -32.0 * spacing[1], 32.0 * spacing[0]] for x in xs], (0, 1, 0), (0, 0, -1),
                     spacing, instances=list(range(N, 0, -1)))


def axial(feet_first: bool) -> StackGeometry:
    """Head-first: columns run to the patient's left (row_dir +x); feet-first: the mirror."""
    zs = [(k - (N - 1) / 2) * 3.0 for k in range(N)]
    if feet_first:
        return _geometry([[32.0, -32.0, z] for z in zs], (-1, 0, 0), (0, 1, 0))
    return _geometry([[-32.0, -32.0, z] for z in zs], (1, 0, 0), (0, 1, 0))


def stack_images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)
    return np.clip(base + 0.1 * rng.standard_normal((n, size, size)), 0, 1).astype(np.float16)


def _point_row(geometry: StackGeometry, series_id: int, description: str, condition: str,
               level: str, patient, index: int | None = None) -> dict:
    """A point row as the localizer writes it (x, y in DICOM pixels of its slice)."""
    index = geometry.nearest(patient)[0] if index is None else index
    x, y = geometry.to_pixel(index, patient)
    return {"study_id": STUDY, "series_id": series_id, "series_description": description,
            "condition": condition, "level": LEVEL_NAMES[level], "side": "center",
            "instance_number": int(geometry.instance_numbers[index]), "slice_index": index,
            "x": x, "y": y}


def _recess_rows(geometry: StackGeometry, series_id: int = AX) -> list[dict]:
    rows = []
    for lv in LEVELS:
        for side, sign in (("left", 1.0), ("right", -1.0)):
            rows.append(_point_row(geometry, series_id, AXIAL_T2,
                                   f"{side.capitalize()} Subarticular Stenosis", lv,
                                   [sign * RECESS_X, CANAL_Y, LEVEL_Z[lv]]))
    return rows


def make_inputs(feet_first: bool = False, with_axial: bool = True, stack_size: int = 32) -> StudyInputs:
    t2, t1, ax = sagittal(3.0), sagittal(4.0), axial(feet_first)
    series = {T2: SeriesStack(T2, SAGITTAL_T2, t2, stack_images(N, stack_size, 1)),
              T1: SeriesStack(T1, SAGITTAL_T1, t1, stack_images(N, stack_size, 2))}
    rows = [_point_row(t2, T2, SAGITTAL_T2, "Spinal Canal Stenosis", lv, [-1.5, CANAL_Y, LEVEL_Z[lv]])
            for lv in LEVELS]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        rows += [_point_row(t1, T1, SAGITTAL_T1, f"{side.capitalize()} Neural Foraminal Narrowing", lv,
                            [sign * 22.0, 0.0, LEVEL_Z[lv]]) for lv in LEVELS]
    if with_axial:
        series[AX] = SeriesStack(AX, AXIAL_T2, ax, stack_images(N, stack_size, 3))
        rows += _recess_rows(ax)
    predicted = pl.DataFrame(rows)
    # annotations: L4/L5 canal one slice over (3 mm) and 4 mm lower; one left recess 2 mm off
    annotated = pl.DataFrame([
        _point_row(t2, T2, SAGITTAL_T2, "Spinal Canal Stenosis", "l4_l5", [1.5, CANAL_Y, LEVEL_Z["l4_l5"] - 4.0]),
        *([_point_row(ax, AX, AXIAL_T2, "Left Subarticular Stenosis", "l2_l3",
                      [RECESS_X + 2.0, CANAL_Y, LEVEL_Z["l2_l3"]])] if with_axial else []),
    ]).drop("series_description", "side", "slice_index")
    rng = np.random.default_rng(0)
    crops = {}
    for lv in LEVELS:
        for _, view in CROP_ROWS:
            mask = np.ones(5, dtype=bool)
            if view == "sag_t1_left" and lv == "l1_l2":
                mask[[0, 4]] = False          # beyond the stack
            status = "ok"
            if view.startswith("axial") and not with_axial:
                mask[:], status = False, "no_series"
            image = rng.random((5, 24, 24)).astype(np.float16) * mask[:, None, None]
            crops[(lv, view)] = CropView(image, mask, status, slices=1, margin=2)
    probs = pl.DataFrame([{"row_id": f"{STUDY}_{c}_{lv}", "normal_mild": 0.7, "moderate": 0.2, "severe": 0.1}
                          for c in CONDITIONS[:4] for lv in LEVELS])  # none for the right recess
    truth = {f"{STUDY}_spinal_canal_stenosis_l4_l5": 2, f"{STUDY}_spinal_canal_stenosis_l1_l2": 0}
    notes = {} if with_axial else {AXIAL_T2: "not listed for this study"}
    return StudyInputs(STUDY, series, predicted, annotated, crops, probs, truth, notes,
                       foramen_offset_mm=FORAMEN_OFFSET_MM)


# --------------------------------------------------------------------------- left / right


def _nearest_edge(labels: tuple[str, str], x: float, width: float) -> str:
    return labels[0] if x < (width - 1) / 2 else labels[1]


def test_axial_edge_labels_follow_the_patient_not_the_image():
    head_first, feet_first = axial(False), axial(True)
    assert not head_first.mirrored and feet_first.mirrored
    hf, ff = patient_side_labels(head_first, 0), patient_side_labels(feet_first, 0)
    assert hf == ("R", "L") and ff == ("L", "R")  # opposite image edges
    left_point = np.array([RECESS_X, CANAL_Y, 0.0])  # LPS +x: the patient's left
    for geometry, labels in ((head_first, hf), (feet_first, ff)):
        x, _ = geometry.to_pixel(7, left_point)
        assert _nearest_edge(labels, x, SIZE) == "L"
        x, _ = geometry.to_pixel(7, left_point * [-1, 1, 1])
        assert _nearest_edge(labels, x, SIZE) == "R"
    # a sagittal image's edges are anterior / posterior
    assert patient_side_labels(sagittal(3.0), 0) == ("A", "P")


@pytest.mark.parametrize("feet_first", [False, True])
def test_sheet_places_each_recess_point_next_to_its_patient_side(feet_first):
    plan = plan_sheet(make_inputs(feet_first=feet_first, stack_size=32))
    for lv in LEVELS:
        panel = plan.axial[lv]
        assert panel.edge_labels == (("L", "R") if feet_first else ("R", "L"))
        width = panel.image.shape[1]
        by_side = {p.label: p.predicted for p in panel.pairs}
        assert set(by_side) == {"L", "R"}
        for side, point in by_side.items():
            assert point.on_slice
            assert _nearest_edge(panel.edge_labels, point.x, width) == side
        # the stack is 32 px for a 64 px matrix: points are drawn in stack pixels
        assert 0 <= by_side["L"].x < width and 0 <= by_side["R"].x < width


def test_sagittal_side_comes_from_position():
    t1 = sagittal(4.0)
    midline = np.array([0.0, 0.0, 0.0])
    left = int(np.argmin(np.abs(t1.ipp[:, 0] - 22.0)))
    right = int(np.argmin(np.abs(t1.ipp[:, 0] + 22.0)))
    assert left < right  # slice order runs toward the patient's right here
    assert sagittal_side_text(t1, left, midline) == "patient left, 22 mm"
    assert sagittal_side_text(t1, right, midline) == "patient right, 22 mm"
    assert sagittal_side_text(t1, left, None).startswith("side unknown")

    plan = plan_sheet(make_inputs())
    assert plan.foramina["left"].side_text.startswith("patient left")
    assert plan.foramina["right"].side_text.startswith("patient right")
    assert not plan.foramina["left"].warning and not plan.foramina["right"].warning
    # left foramen points put on a right-hand slice: the panel says so and warns
    inputs = make_inputs()
    swapped = inputs.predicted.with_columns(
        instance_number=pl.when(pl.col("condition") == "Left Neural Foraminal Narrowing")
        .then(pl.lit(int(t1.instance_numbers[right]))).otherwise(pl.col("instance_number")))
    inputs.predicted = swapped
    panel = plan_sheet(inputs).foramina["left"]
    assert panel.side_text.startswith("patient right") and panel.warning


def test_foramen_panel_without_points_takes_the_configured_offset():
    """No foramen point: each foramen panel shows the slice nearest ``foramen_offset_mm``
    toward its side of the canal slice (the offset the caller passes, from the config)."""
    with pytest.raises(TypeError):  # no default in code: the caller passes the config's
        StudyInputs(STUDY)
    t1 = sagittal(4.0)
    for offset in (FORAMEN_OFFSET_MM, 8.0):
        inputs = make_inputs()
        inputs.predicted = inputs.predicted.filter(~pl.col("condition").str.contains("Foraminal"))
        inputs.foramen_offset_mm = offset
        plan = plan_sheet(inputs)
        midline = np.array(plan.midline)
        for side, sign in (("left", 1), ("right", -1)):
            panel = plan.foramina[side]
            assert panel.note == f"no foramen points: slice nearest {sign * offset:+.0f} mm"
            offsets = t1.left_offsets(midline)
            assert panel.slice_index == int(np.argmin(np.abs(offsets - sign * offset)))
            assert panel.side_text.startswith(f"patient {side}") and not panel.warning


def test_distances_are_measured_in_patient_space():
    inputs = make_inputs()
    canal = {p.label: p for p in plan_sheet(inputs).canal.pairs}
    pair = canal["L4/L5"]
    # one slice over (3 mm) and 4 mm lower: 5 mm, though 4 px apart in the image
    assert pair.distance_mm == pytest.approx(5.0, abs=1e-6)
    assert pair.predicted.on_slice and not pair.annotated.on_slice
    assert canal["L1/L2"].annotated is None and canal["L1/L2"].distance_mm is None
    # anisotropic pixels: 0.5 mm columns, the same 2 mm in x is 4 columns
    t2 = sagittal(3.0, spacing=(1.0, 0.5))
    base = np.array([-1.5, CANAL_Y, LEVEL_Z["l3_l4"]])
    inputs.series[T2] = SeriesStack(T2, SAGITTAL_T2, t2, stack_images(N, 32, 1))
    inputs.predicted = pl.DataFrame([_point_row(t2, T2, SAGITTAL_T2, "Spinal Canal Stenosis", "l3_l4", base)])
    annotated = _point_row(t2, T2, SAGITTAL_T2, "Spinal Canal Stenosis", "l3_l4", base + [0, 2.0, 0])
    assert annotated["x"] - inputs.predicted["x"][0] == pytest.approx(4.0)
    inputs.annotated = pl.DataFrame([annotated])
    (pair,) = plan_sheet(inputs).canal.pairs
    assert pair.distance_mm == pytest.approx(2.0)


# --------------------------------------------------------------------------- crops


def test_masked_crop_slices_are_drawn_as_masked():
    rng = np.random.default_rng(1)
    crop = rng.random((5, 8, 10)).astype(np.float16)
    mask = np.array([False, True, True, True, False])
    tiles = crop_tiles(crop, mask)
    pattern = masked_pattern(8, 10)
    assert len(np.unique(pattern)) == 2  # hatched, not a flat fill
    for s in (0, 4):
        np.testing.assert_array_equal(tiles[s], pattern)
    np.testing.assert_array_equal(tiles[1:4], crop[1:4].astype(np.float32))
    with pytest.raises(ValueError):
        crop_tiles(crop, mask[:3])

    crops = {("l1_l2", "sag_t2_canal"): CropView(crop, mask, "ok", slices=1, margin=2),
             ("l1_l2", "axial_canal"): CropView(np.zeros_like(crop), np.zeros(5, bool), "no_series")}
    montage = crop_montage("l1_l2", crops)
    assert montage.statuses[:2] == ("ok", "no_series") and set(montage.statuses[2:]) == {"missing"}
    assert montage.masked[0].tolist() == mask.__invert__().tolist()
    assert montage.masked[1:].all()
    h, w = montage.tile
    gap = GAP
    first, second = montage.image[0:h, 0:w], montage.image[0:h, w + gap:2 * w + gap]
    np.testing.assert_array_equal(first, pattern)           # row 0, slice -2: masked
    np.testing.assert_array_equal(second, crop[1].astype(np.float32))
    np.testing.assert_array_equal(montage.image[h + gap:2 * h + gap, w + gap:2 * w + gap], pattern)
    assert montage.offsets == (-2, -1, 0, 1, 2)


# --------------------------------------------------------------------------- rendering


def _read_png(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32)


def test_render_sheet(tmp_path):
    inputs = make_inputs(feet_first=True)
    path = tmp_path / "sheets" / f"{STUDY}.png"  # speed: benchmarks/bench_qa_sheets.py
    plan = render_study_sheet(inputs, path, dpi=DPI)
    pixels = _read_png(path)
    assert 600 <= pixels.shape[1] <= 2000 and 500 <= pixels.shape[0] <= 1600
    assert pixels.var() > 0
    assert plan.grid.truth[0, 3] == 2 and np.isnan(plan.grid.probs[4]).all()
    assert plan.grid.probs[0, 0].tolist() == pytest.approx([0.7, 0.2, 0.1])


def test_missing_axial_series_renders_with_a_note(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    drawn: list[str] = []
    original = Axes.text

    def spy(self, x, y, s, *args, **kwargs):
        drawn.append(str(s))
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", spy)
    inputs = make_inputs(with_axial=False)
    path = tmp_path / "no_axial.png"
    plan = render_study_sheet(inputs, path, dpi=DPI)
    assert _read_png(path).var() > 0
    for lv in LEVELS:
        assert plan.axial[lv].image is None and plan.axial[lv].note.startswith("no Axial T2")
    assert sum(s.startswith("no Axial T2") for s in drawn) == len(LEVELS)
    assert any("not listed for this study" in s for s in drawn)
    assert any(s == "masked (no_series)" for s in drawn)  # the axial crops that could not be cut
    # the sagittal panels are drawn as usual
    assert plan.canal.image is not None and len(plan.canal.pairs) == len(LEVELS)


def test_study_without_any_series_still_renders(tmp_path):
    inputs = StudyInputs(STUDY, foramen_offset_mm=FORAMEN_OFFSET_MM)
    plan = render_study_sheet(inputs, tmp_path / "empty.png", dpi=DPI)
    assert plan.canal.note.startswith("no Sagittal T2") and plan.foramina["left"].note.startswith("no Sagittal T1")
    assert _read_png(tmp_path / "empty.png").var() > 0


# --------------------------------------------------------------------------- loading


def test_load_study_inputs_from_run_files(tmp_path):
    from spinepipe.localize.stacks import StackCache
    from spinepipe.qa.inputs import load_study_inputs

    t2, ax = sagittal(3.0), axial(True)
    images = stack_images(N, 32, 1)
    # stack written in another order than the geometry's: matched by instance number
    order = np.arange(N)[::-1]
    np.save(tmp_path / "stacks.npy", images[order].astype(np.float16))
    stack_index = pl.DataFrame({"series_id": [T2, AX], "path": [str(tmp_path / "stacks.npy"), None],
                                "offset": [0, None], "n_slices": [N, 0],
                                "instance_numbers": [t2.instance_numbers[order].tolist(), None],
                                "slice_ok": [[True] * N, None], "scale_x": [2.0, None],
                                "scale_y": [2.0, None], "status": ["ok", "unreadable"]})
    series = pl.DataFrame({"study_id": [STUDY, STUDY, 7], "series_id": [T2, AX, 99],
                           "series_description": [SAGITTAL_T2, AXIAL_T2, SAGITTAL_T1],
                           "geometry_ok": [True, True, True], "geometry_error": [None, None, None]})
    crop_array = np.random.default_rng(0).random((2, 5, 12, 12)).astype(np.float16)
    np.save(tmp_path / "shard0.npy", crop_array)
    crop_index = pl.DataFrame({"study_id": [STUDY, STUDY], "level": ["l1_l2", "l1_l2"],
                               "view": ["sag_t2_canal", "axial_canal"], "row": [0, 1],
                               "status": ["ok", "no_point"],
                               "slice_mask": [[False, True, True, True, True], [False] * 5],
                               "array": [str(tmp_path / "shard0.npy")] * 2})
    labels_long = pl.DataFrame({"row_id": [f"{STUDY}_spinal_canal_stenosis_l1_l2", "7_spinal_canal_stenosis_l1_l2"],
                                "study_id": [STUDY, 7], "target": [1, 2]})
    coords = pl.DataFrame([{**_point_row(t2, T2, SAGITTAL_T2, "Spinal Canal Stenosis", "l1_l2",
                                         [0.0, CANAL_Y, 20.0]), "source": s} for s in ("annotated", "predicted")])
    inputs = load_study_inputs(STUDY, series, {T2: t2, AX: ax}, StackCache(stack_index),
                               coordinates=coords, crop_index=crop_index,
                               crop_cfg={"slices": 1, "margin": 2}, labels_long=labels_long,
                               foramen_offset_mm=FORAMEN_OFFSET_MM)
    assert set(inputs.series) == {T2, AX}
    np.testing.assert_array_equal(inputs.series[T2].images, images)
    assert inputs.series[T2].scale == (2.0, 2.0) and inputs.series[AX].images is None
    assert "no cached stack" in inputs.notes[AXIAL_T2] and "not listed" in inputs.notes[SAGITTAL_T1]
    assert inputs.annotated.height == 1 and inputs.truth == {f"{STUDY}_spinal_canal_stenosis_l1_l2": 1}
    crop = inputs.crops[("l1_l2", "sag_t2_canal")]
    np.testing.assert_array_equal(crop.image, crop_array[0].astype(np.float32))
    assert crop.mask.tolist() == [False, True, True, True, True] and crop.slices == 1
    assert inputs.crops[("l1_l2", "axial_canal")].status == "no_point"
    assert inputs.foramen_offset_mm == FORAMEN_OFFSET_MM
    render_study_sheet(inputs, tmp_path / "loaded.png", dpi=DPI)
    assert (tmp_path / "loaded.png").stat().st_size > 0
