"""QA galleries: case selection from run tables, row_id parsing, and contact sheets drawn
from small synthetic inputs (no pipeline outputs needed)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_qa_sheet import (
    AX,
    CANAL_Y,
    DPI,
    FORAMEN_OFFSET_MM,
    LEVEL_Z,
    RECESS_X,
    STUDY,
    T1,
    T2,
    N,
    axial,
    sagittal,
    stack_images,
)

from spinepipe.constants import (
    AXIAL_T2,
    CONDITION_NAMES,
    CONDITIONS,
    LEVEL_NAMES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    row_id,
)
from spinepipe.geometry import StackGeometry
from spinepipe.qa.cases import (
    CASE_SCHEMA,
    GALLERIES,
    cases_table,
    confident_wrong_cases,
    degraded_cases,
    label_noise_cases,
    localization_error_cases,
    parse_row_id,
)
from spinepipe.qa.galleries import draw_tile, render_gallery
from spinepipe.qa.montage import CROP_ROWS
from spinepipe.qa.tiles import plan_tile
from spinepipe.qa.types import CropView, SeriesStack, StudyInputs

CANAL, L_FORAMEN, L_RECESS = (CONDITION_NAMES[c] for c in (
    "spinal_canal_stenosis", "left_neural_foraminal_narrowing", "left_subarticular_stenosis"))


# --------------------------------------------------------------------------- synthetic study
# (the geometry and image builders of tests/test_qa_sheet.py)


def _point(geometry: StackGeometry, series_id: int, condition: str, level: str, patient,
           study: int = STUDY) -> dict:
    """A point row as the localizer / annotations have it (x, y in DICOM pixels)."""
    index = geometry.nearest(patient)[0]
    x, y = geometry.to_pixel(index, patient)
    return {"study_id": study, "series_id": series_id, "condition": condition,
            "level": LEVEL_NAMES[level], "instance_number": int(geometry.instance_numbers[index]),
            "x": x, "y": y}


def make_inputs(study: int = STUDY, feet_first: bool = False, images: bool = True,
                crops: bool = True) -> StudyInputs:
    t2, t1, ax = sagittal(3.0), sagittal(4.0), axial(feet_first)
    series = {sid: SeriesStack(sid, desc, g, stack_images(N, 32, sid) if images else None)
              for sid, desc, g in ((T2, SAGITTAL_T2, t2), (T1, SAGITTAL_T1, t1), (AX, AXIAL_T2, ax))}
    predicted = [_point(t2, T2, CANAL, lv, [-1.5, CANAL_Y, LEVEL_Z[lv]], study) for lv in LEVELS]
    predicted += [_point(t1, T1, L_FORAMEN, lv, [22.0, 0.0, LEVEL_Z[lv]], study) for lv in LEVELS]
    predicted += [_point(ax, AX, L_RECESS, lv, [RECESS_X, CANAL_Y, LEVEL_Z[lv]], study) for lv in LEVELS]
    annotated = [
        # one slice over (3 mm) and 4 mm lower: 5 mm in patient space
        _point(t2, T2, CANAL, "l4_l5", [1.5, CANAL_Y, LEVEL_Z["l4_l5"] - 4.0], study),
        _point(t1, T1, L_FORAMEN, "l3_l4", [22.0, 0.0, LEVEL_Z["l3_l4"] + 6.0], study),
        _point(ax, AX, L_RECESS, "l2_l3", [RECESS_X + 2.0, CANAL_Y + 1.0, LEVEL_Z["l2_l3"]], study),
    ]
    crop_views = {}
    if crops:
        rng = np.random.default_rng(0)
        for lv in LEVELS:
            for _, view in CROP_ROWS:
                crop_views[(lv, view)] = CropView(rng.random((5, 24, 24)).astype(np.float16),
                                                  np.ones(5, dtype=bool), "ok", slices=1, margin=2)
    return StudyInputs(study, series, pl.DataFrame(predicted), pl.DataFrame(annotated), crop_views,
                       foramen_offset_mm=FORAMEN_OFFSET_MM)


def noise_table() -> pl.DataFrame:
    return pl.DataFrame({
        "study_id": [STUDY, STUDY, STUDY, 7, 8, 9],
        "condition": [CANAL, L_FORAMEN, L_RECESS, CANAL, CANAL, CANAL],
        "level": ["L4/L5", "L3/L4", "L2/L3", "L1/L2", "L2/L3", "L5/S1"],
        "series_id": [T2, T1, AX, 1, 2, 3],
        "distance_mm": [5.0, 58.4225, 2.2, 40.0, None, 12.0],
        "noisy": [False, True, False, True, None, False],
    })


# --------------------------------------------------------------------------- selection


def test_parse_row_id_round_trips_every_condition_and_level():
    for condition in CONDITIONS:
        for level in LEVELS:
            assert parse_row_id(row_id(36119832, condition, level)) == (
                36119832, CONDITION_NAMES[condition], LEVEL_NAMES[level])
    for bad in ("36119832_spinal_canal_stenosis_l1_l3", "x_spinal_canal_stenosis_l1_l2",
                "36119832_canal_l1_l2", "36119832_spinal_canal_stenosis_l1_l2_"):
        with pytest.raises(ValueError):
            parse_row_id(bad)


def test_localization_errors_largest_first_and_at_most_n():
    cases = localization_error_cases(noise_table(), 3)
    assert dict(cases.schema) == CASE_SCHEMA
    assert cases["value"].to_list() == pytest.approx([58.4225, 40.0, 12.0])
    assert cases["study_id"].to_list() == [STUDY, 7, 9]
    assert set(cases["gallery"]) == {"localization_errors"}
    assert cases["note"][0] == "annotation 58.4 mm from the out-of-fold prediction"
    assert cases["row_id"][0] == f"{STUDY}_left_neural_foraminal_narrowing_l3_l4"
    assert cases["series_id"][0] == T1
    everything = localization_error_cases(noise_table(), 100)
    assert everything.height == 5  # the null distance is left out
    assert everything["value"].to_list() == sorted(everything["value"].to_list(), reverse=True)
    assert localization_error_cases(noise_table(), 0).height == 0


def test_label_noise_keeps_only_noisy_rows():
    cases = label_noise_cases(noise_table(), 10)
    assert cases["value"].to_list() == pytest.approx([58.4225, 40.0])  # 12 mm is not noisy
    assert set(cases["gallery"]) == {"label_noise"}
    assert cases["note"][0].startswith("label noise: annotation 58.4 mm")
    # "true"/"false" read as strings
    as_text = noise_table().with_columns(pl.col("noisy").cast(pl.String).str.to_lowercase())
    assert label_noise_cases(as_text, 10)["value"].to_list() == pytest.approx([58.4225, 40.0])
    assert label_noise_cases(noise_table(), 1).height == 1


def test_confident_wrong_skips_correct_and_unlabelled_rows():
    rows = [  # row, probabilities, target
        (row_id(1, "spinal_canal_stenosis", "l1_l2"), (0.05, 0.04, 0.91), 0),     # wrong, 0.91
        (row_id(1, "spinal_canal_stenosis", "l2_l3"), (0.10, 0.10, 0.80), 2),     # right
        (row_id(2, "left_subarticular_stenosis", "l5_s1"), (0.70, 0.20, 0.10), 2),  # wrong, 0.70
        (row_id(2, "right_neural_foraminal_narrowing", "l3_l4"), (0.01, 0.98, 0.01), None),  # no label
        (row_id(3, "left_neural_foraminal_narrowing", "l4_l5"), (0.20, 0.60, 0.20), 0),  # wrong, 0.60
        (row_id(3, "left_neural_foraminal_narrowing", "l1_l2"), (0.99, 0.005, 0.005), 0),  # right
    ]
    oof = pl.DataFrame({"row_id": [r[0] for r in rows], "fold": [0] * len(rows),
                        "normal_mild": [r[1][0] for r in rows], "moderate": [r[1][1] for r in rows],
                        "severe": [r[1][2] for r in rows]})
    labels = pl.DataFrame({"row_id": [r[0] for r in rows],
                           "study_id": [int(r[0].split("_")[0]) for r in rows],
                           "target": [r[2] for r in rows]}, schema_overrides={"target": pl.Int8})
    cases = confident_wrong_cases(oof, labels, 10)
    assert dict(cases.schema) == CASE_SCHEMA
    assert cases["row_id"].to_list() == [rows[0][0], rows[2][0], rows[4][0]]
    assert cases["value"].to_list() == pytest.approx([0.91, 0.70, 0.60])
    assert cases["study_id"].to_list() == [1, 2, 3]
    assert cases["condition"].to_list() == ["Spinal Canal Stenosis", "Left Subarticular Stenosis",
                                            "Left Neural Foraminal Narrowing"]
    assert cases["level"].to_list() == ["L1/L2", "L5/S1", "L4/L5"]
    assert cases["note"][0].startswith("predicted severe 0.91, truth normal_mild")
    assert confident_wrong_cases(oof, labels, 2).height == 2
    # a row without a label at all (not in labels_long) is not a case either
    assert confident_wrong_cases(oof, labels.head(1), 10).height == 1


def test_degraded_keeps_every_row():
    reasons = [f"predicted without axial_canal ({k})" for k in range(30)]
    degraded = pl.DataFrame({"row_id": [row_id(100 + k, CONDITIONS[k % 5], LEVELS[k % 5]) for k in range(30)]
                             + ["not_a_row_id"],
                             "reason": reasons + ["odd"], "fallback": ["prior"] * 31})
    cases = degraded_cases(degraded)
    assert cases.height == 31 and set(cases["gallery"]) == {"degraded"}
    assert cases["value"].to_list() == [0.0] * 31
    assert cases["note"][0] == "predicted without axial_canal (0) -> prior"
    assert cases["row_id"].to_list() == degraded["row_id"].to_list()  # the file's order
    assert cases["study_id"][30] is None and cases["condition"][30] is None
    assert degraded_cases(degraded, 5).height == 5


def test_cases_table_concatenates_galleries():
    noise = noise_table()
    table = cases_table(localization_error_cases(noise, 2), label_noise_cases(noise, 2),
                        degraded_cases(pl.DataFrame({"row_id": [row_id(1, CONDITIONS[0], LEVELS[0])],
                                                     "reason": ["r"], "fallback": ["f"]})))
    assert table.height == 5 and dict(table.schema) == CASE_SCHEMA
    assert table["gallery"].to_list() == ["localization_errors"] * 2 + ["label_noise"] * 2 + ["degraded"]
    assert cases_table().height == 0


# --------------------------------------------------------------------------- tiles


def _case(gallery: str, condition: str, level: str, value: float = 10.0, study: int = STUDY,
          series_id: int | None = None) -> dict:
    return {"gallery": gallery, "study_id": study, "condition": condition, "level": level,
            "value": value, "note": "a note", "row_id": None, "series_id": series_id}


def _scatter_points(ax) -> list[np.ndarray]:
    from matplotlib.collections import PathCollection
    return [np.asarray(c.get_offsets(), dtype=float) for c in ax.collections
            if isinstance(c, PathCollection)]


def test_localization_tile_draws_annotation_and_prediction_on_one_axes():
    inputs = make_inputs()
    plan = plan_tile(_case("localization_errors", CANAL, "L4/L5", series_id=T2), inputs)
    assert plan.kind == "image"
    assert plan.header.startswith(f"{STUDY} · Spinal Canal Stenosis L4/L5 · 10.0 mm")
    panel = plan.panel
    (pair,) = panel.pairs
    # the annotated point's own slice is shown; the prediction (one slice over) projected on it
    t2 = inputs.series[T2].geometry
    annotated_index = t2.index_of(int(inputs.annotated["instance_number"][0]))
    assert panel.series_id == T2 and panel.slice_index == annotated_index
    assert pair.annotated.on_slice and not pair.predicted.on_slice
    assert pair.distance_mm == pytest.approx(5.0)
    assert panel.edge_labels == ("A", "P") and panel.side_text.startswith("patient")

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    try:
        draw_tile(ax, plan)
        points = _scatter_points(ax)
        for placed in (pair.annotated, pair.predicted):
            assert any(np.allclose(p, [[placed.x, placed.y]]) for p in points), placed.kind
        from matplotlib.collections import LineCollection
        (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        np.testing.assert_allclose(lines.get_segments()[0], [[pair.predicted.x, pair.predicted.y],
                                                             [pair.annotated.x, pair.annotated.y]])
    finally:
        plt.close(fig)


@pytest.mark.parametrize("feet_first", [False, True])
def test_axial_localization_tile_keeps_patient_sides(feet_first):
    plan = plan_tile(_case("label_noise", L_RECESS, "L2/L3"), make_inputs(feet_first=feet_first))
    panel = plan.panel
    assert panel.edge_labels == (("L", "R") if feet_first else ("R", "L"))
    (pair,) = panel.pairs
    assert pair.annotated.on_slice and pair.predicted is not None
    width = panel.image.shape[1]
    for point in (pair.annotated, pair.predicted):  # both on the patient's left
        edge = panel.edge_labels[0] if point.x < (width - 1) / 2 else panel.edge_labels[1]
        assert edge == "L"


def test_foramen_tile_states_its_side_from_position():
    plan = plan_tile(_case("localization_errors", L_FORAMEN, "L3/L4"), make_inputs())
    assert plan.panel.series_id == T1 and plan.panel.side_text.startswith("patient left")
    (pair,) = plan.panel.pairs
    assert pair.distance_mm == pytest.approx(6.0)


def test_confident_wrong_and_degraded_tiles():
    inputs = make_inputs()
    plan = plan_tile(_case("confident_wrong", L_FORAMEN, "L3/L4"), inputs)
    assert plan.kind == "montage" and plan.montage.level == "l3_l4"
    assert plan.family_rows == (2, 3)  # the foraminal model's T1 left / right rows
    plan = plan_tile({**_case("degraded", CANAL, "L1/L2"), "note": "no axial -> model"}, inputs)
    assert plan.kind == "image" and plan.panel.series_id == T2 and plan.panel.pairs == ()
    assert "no axial -> model" in plan.header
    # no images cached: text only
    assert plan_tile(_case("degraded", CANAL, "L1/L2"), make_inputs(images=False)).kind == "text"
    assert plan_tile(_case("degraded", CANAL, "L1/L2"), None).text == f"no inputs for study {STUDY}"


# --------------------------------------------------------------------------- rendering


def _read_png(path) -> np.ndarray:
    from matplotlib.image import imread
    return imread(path)


def _mixed_cases() -> pl.DataFrame:
    rows = [_case("localization_errors", CANAL, "L4/L5", 5.0),
            _case("label_noise", L_FORAMEN, "L3/L4", 6.0),
            _case("confident_wrong", L_RECESS, "L2/L3", 0.9),
            _case("degraded", CANAL, "L1/L2", 0.0)]
    return pl.DataFrame(rows, schema=CASE_SCHEMA)


@pytest.mark.parametrize("gallery", GALLERIES)
def test_render_each_gallery_kind(tmp_path, gallery):
    pairs = ((CANAL, "L4/L5"), (L_RECESS, "L2/L3"))
    cases = pl.DataFrame([_case(gallery, c, lv) for c, lv in pairs], schema=CASE_SCHEMA)
    path = tmp_path / "sub" / f"{gallery}.png"
    assert render_gallery(cases, lambda study: make_inputs(study), path, gallery, dpi=DPI) == 2
    pixels = _read_png(path)
    assert pixels.std() > 0.01 and pixels.shape[0] > 200 and pixels.shape[1] > 400


def test_render_gallery_sizes_missing_inputs_and_empty(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    drawn: list[str] = []
    original = Figure.text

    def spy(self, x, y, s, *args, **kwargs):
        drawn.append(str(s))
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Figure, "text", spy)
    calls: list[int] = []

    def inputs_for(study: int) -> StudyInputs | None:
        calls.append(study)
        return None if study == 999 else make_inputs(study)

    four = _mixed_cases()
    twelve = pl.concat([four, four, four.with_columns(study_id=pl.lit(999, dtype=pl.Int64))])
    assert render_gallery(four, inputs_for, tmp_path / "four.png", "four", dpi=DPI) == 4
    assert render_gallery(twelve, inputs_for, tmp_path / "twelve.png", "twelve", dpi=DPI) == 12
    # inputs_for is called once per study and gallery
    assert set(calls) == {STUDY, 999} and calls.count(999) == 1 and calls.count(STUDY) == 2
    small, large = _read_png(tmp_path / "four.png"), _read_png(tmp_path / "twelve.png")
    assert small.shape[1] == large.shape[1] and large.shape[0] > 2 * small.shape[0] > 0
    assert large.std() > 0.01
    assert "twelve (12 cases)" in drawn

    empty = twelve.head(0)
    assert render_gallery(empty, inputs_for, tmp_path / "empty.png", "empty", dpi=DPI) == 0
    nothing = _read_png(tmp_path / "empty.png")
    assert nothing.std() > 0.01 and nothing.size < small.size
    assert "nothing to show" in drawn

    # a failing loader gives a text tile, not an exception
    def broken(study: int) -> StudyInputs:
        raise OSError("stack cache unreadable")

    assert render_gallery(four.head(1), broken, tmp_path / "broken.png", "broken", dpi=DPI) == 1
    assert _read_png(tmp_path / "broken.png").std() > 0.01


def test_a_very_long_gallery_is_cut_at_the_image_size_limit(tmp_path, monkeypatch):
    import spinepipe.qa.galleries as galleries
    limit = int(8.75 * DPI)  # 8.75 in: two rows of tiles
    monkeypatch.setattr(galleries, "MAX_IMAGE_PIXELS", limit)
    cases = pl.concat([_mixed_cases()] * 3)
    assert render_gallery(cases, lambda study: None, tmp_path / "long.png", "long", dpi=DPI) == 8
    pixels = _read_png(tmp_path / "long.png")
    assert pixels.shape[0] <= limit and pixels.std() > 0.01
    assert render_gallery(cases.head(5), lambda study: None, tmp_path / "five.png", "five",
                          columns=5, dpi=DPI) == 5


def test_no_inputs_tile_says_so(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    drawn: list[str] = []
    original = Axes.text

    def spy(self, x, y, s, *args, **kwargs):
        drawn.append(str(s))
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", spy)
    assert render_gallery(_mixed_cases(), lambda study: None, tmp_path / "none.png", "none",
                          dpi=DPI) == 4
    assert drawn.count(f"no inputs for study {STUDY}") == 4
