"""Level localization: the point model learns, inference survives missing and broken
series, label-noise handling, evaluation against ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from spinepipe.dataset import read_coordinates, read_series_descriptions
from spinepipe.localize.coordinates import merge_coordinates
from spinepipe.localize.evaluate import evaluate_localization
from spinepipe.localize.inference import FoldModels
from spinepipe.localize.models import PointModel, SliceModel, local_soft_argmax, soft_argmax
from spinepipe.localize.samples import SLICE_TARGETS, point_samples, slice_samples
from spinepipe.localize.stacks import StackCache, build_stacks
from spinepipe.localize.study import StudyLocalizer, localize_split
from spinepipe.localize.training import evaluate_points, train_point_model, train_slice_model
from spinepipe.metadata import parse_instances, summarize_series
from spinepipe.xref import slice_reader, stack_geometries

CFG = {"slice_method": "geometric", "report_learned_slices": True, "slice_image_size": 32, "axial_crop": 32,
       "decode": {"radius": 3, "search": 0.05}, "foramen_refine_slices": 0, "foramen_realign": False,
       "canal_slice_from_axial": False, "axial_refine_slices": 0, "foramen_offset_mm": 21.0}


def _prepare(dataset: Path, split: str, tmp: Path):
    table = read_series_descriptions(dataset / f"{split}_series_descriptions.csv")
    instances = parse_instances(dataset / f"{split}_images", table)
    series = summarize_series(instances, table)
    index = build_stacks(instances, series, 64, tmp / f"stacks_{split}" / "stacks.npy")
    return instances, series, index


@pytest.fixture(scope="module")
def tiny_train(tiny_dataset, tmp_path_factory):
    dataset, _ = tiny_dataset
    instances, series, index = _prepare(dataset, "train", tmp_path_factory.mktemp("loc"))
    return dataset, instances, series, index


def test_point_model_learns_the_canal(tiny_train):
    dataset, _, series, index = tiny_train
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    samples = point_samples("sagittal_t2", coords, StackCache(index), series, None, 32, neighbours=1)
    assert len(samples) >= 15
    cfg = {"seed": 0, "backbone": "resnet10t", "lr": 3e-3, "weight_decay": 1e-4, "batch_size": 8,
           "epochs": 12, "augment": {"shift": 0.03, "scale": 0.05, "rotate": 3},
           "neighbour_sampling": "all", "channels_last": True, "precision": "bf16", "device": "cpu",
           "weights": ""}
    history = []
    model, metrics = train_point_model(samples, samples, 5, cfg, lambda m, step: history.append(m))
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    # trained in bfloat16 on channels-last tensors, returned as a plain float32 model
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    # beats always answering the mean training position of each level
    mean_points = np.array([np.mean([s.points[k] for s in samples if s.mask[k]], axis=0)
                            for k in range(5)])
    baseline = np.median([np.hypot(*(s.points[k] - mean_points[k])) * s.mm_per_px
                          for s in samples for k in range(5) if s.mask[k]])
    learned = evaluate_points(model, samples, 8)["val_point_error_mm_median"]
    print(f"\ncanal point error: model {learned:.1f} mm vs mean-position baseline {baseline:.1f} mm")
    assert learned < 0.8 * baseline


def test_slice_model_learns_in_mixed_precision(tiny_train):
    dataset, _, _, index = tiny_train
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    samples = slice_samples("sagittal_t2", coords, StackCache(index), 32)
    cfg = {"seed": 0, "backbone": "resnet10t", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 4,
           "precision": "bf16", "device": "cpu", "weights": ""}
    history = []
    model, metrics = train_slice_model(samples, samples, SLICE_TARGETS["sagittal_t2"], cfg,
                                       lambda m, step: history.append(m))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0 <= metrics["val_slice_within_one"] <= 1
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_slice_samples_target_the_annotated_slice(tiny_train):
    dataset, _, _, index = tiny_train
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    cache = StackCache(index)
    samples = slice_samples("sagittal_t1", coords, cache, 32)
    assert samples and all(s.targets.shape == (10,) for s in samples)
    for s in samples:
        known = s.targets[s.targets >= 0]
        assert known.max() < s.stack.shape[0]


def _random_models() -> dict[str, FoldModels]:
    return {"sagittal_t2": FoldModels([PointModel("resnet10t", 5).eval()], [SliceModel("resnet10t", 5).eval()]),
            "sagittal_t1": FoldModels([PointModel("resnet10t", 5).eval()], []),
            "axial_t2": FoldModels([PointModel("resnet10t", 2).eval()], [])}


def test_missing_and_unreadable_series_are_reported_not_fatal(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    copy = tmp_path / "data"
    shutil.copytree(dataset / "test_images", copy / "test_images")
    shutil.copy(dataset / "test_series_descriptions.csv", copy)
    table = read_series_descriptions(copy / "test_series_descriptions.csv")
    studies = sorted(table["study_id"].unique().to_list())
    # study 0 loses its Sagittal T2 folder; study 1's axial files are all corrupt
    t2 = table.filter((pl.col("study_id") == studies[0]) & (pl.col("series_description") == "Sagittal T2/STIR"))
    shutil.rmtree(copy / "test_images" / str(studies[0]) / str(t2["series_id"][0]))
    for axial_id in table.filter((pl.col("study_id") == studies[1]) &
                                 (pl.col("series_description") == "Axial T2"))["series_id"]:
        for f in (copy / "test_images" / str(studies[1]) / str(axial_id)).glob("*.dcm"):
            f.write_bytes(b"garbage")
    instances, series, index = _prepare(copy, "test", tmp_path)
    localizer = StudyLocalizer(_random_models(), StackCache(index), stack_geometries(instances, series),
                               slice_reader(instances), CFG)
    predictions, reasons = localize_split(studies, series, lambda sid: localizer)
    by_study = {sid: set(predictions.filter(pl.col("study_id") == sid)["series_description"])
                for sid in studies}
    assert by_study[studies[0]] == {"Sagittal T1", "Axial T2"}  # axial still found via the foramina
    assert "Axial T2" not in by_study[studies[1]] and "Sagittal T2/STIR" in by_study[studies[1]]
    assert by_study[studies[2]] == {"Sagittal T1", "Sagittal T2/STIR", "Axial T2"}
    why = {(r["study_id"], r["series_description"]): r["reason"] for r in reasons.iter_rows(named=True)}
    assert "Sagittal T2" in why[(studies[0], "Sagittal T2/STIR")]
    assert "Axial T2" in why[(studies[1], "Axial T2")]
    assert predictions.filter(pl.col("series_description") == "Sagittal T1").height == 3 * 10
    assert predictions["x"].is_finite().all() and predictions["y"].is_finite().all()


def test_perfect_predictions_evaluate_to_zero_error(tiny_train):
    dataset, instances, series, _ = tiny_train
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    quirks = pl.read_csv(dataset / "quirks.csv")
    geometries = stack_geometries(instances, series)
    centers = pl.read_csv(dataset / "level_centers.csv").filter(pl.col("split") == "train")
    rows = []
    for r in coords.join(series.select("series_id", "series_description"), on="series_id").iter_rows(named=True):
        g = geometries[r["series_id"]]
        index = g.index_of(r["instance_number"])
        rows.append(r | {"slice_index": index, "geometric_slice": index, "learned_slice": None})
    result = evaluate_localization(pl.DataFrame(rows), geometries, centers)
    off = quirks.filter(pl.col("quirk").str.starts_with("coordinate_off")).height
    for task in ("sagittal_t2", "sagittal_t1", "axial_t2"):
        assert result[task]["slice_geometric_exact"] >= 0.95
        assert result[task]["slice_learned_exact"] is None
        if off == 0:
            assert result[task]["point_error_mm_p95"] < 0.05
        assert result[task]["slice_within_one"] >= 0.95
        if off == 0:  # an annotation moved by the quirk can be a gross "error" of a perfect prediction
            assert result[task]["gross_error_share"] == 0.0
    # one Sagittal T2 point 40 pixels (well over 15 mm) off: a gross error, its target missed
    frame = pl.DataFrame(rows)
    canal = pl.col("series_description") == "Sagittal T2/STIR"
    first = canal & (pl.int_range(pl.len()).over(canal) == 0)
    moved = evaluate_localization(frame.with_columns(x=pl.when(first).then(pl.col("x") + 40).otherwise(pl.col("x"))),
                                  geometries, centers)
    n = moved["sagittal_t2"]["n"]
    assert abs(moved["sagittal_t2"]["gross_error_share"] - result["sagittal_t2"]["gross_error_share"]
               - 1 / n) < 1e-9
    assert not moved["sagittal_t2"]["targets_met"]["gross_error_share"] and not moved["all_targets_met"]


def test_label_noise_is_reported_and_handled(tiny_train):
    dataset, instances, series, _ = tiny_train
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    # predictions equal to the annotations, except one moved by 20 pixels
    predicted = coords.join(series.select("series_id", "series_description"), on="series_id").with_columns(
        side=pl.lit("center"), slice_index=pl.lit(0), confidence=pl.lit(0.5), spread_px=pl.lit(0.0),
        geometric_slice=pl.lit(0), learned_slice=pl.lit(None, pl.Int64), slice_method=pl.lit("geometric"))
    predicted = predicted.with_columns(
        x=pl.when(pl.int_range(pl.len()) == 0).then(pl.col("x") + 20).otherwise(pl.col("x")))
    for action, expected_annotated in (("keep", coords.height), ("replace", coords.height - 1),
                                       ("drop", coords.height - 1)):
        merged, noise = merge_coordinates(coords, predicted, instances, series, 6.0, action)
        assert noise.filter(pl.col("noisy")).height == 1
        assert merged.filter(pl.col("source") == "annotated").height == expected_annotated
        predicted_rows = merged.filter(pl.col("source") == "predicted").height
        assert predicted_rows == (1 if action == "replace" else 0)


def test_local_decoding_is_not_pulled_between_two_discs():
    """Two modes (a disc and its similar-looking neighbour): the global expectation lands
    between them, the peak-local decode on the stronger one, to sub-cell precision, and the
    search window keeps a far, stronger mode from capturing the point."""
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w]

    def blob(x, y, weight):
        return weight * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)

    heat = blob(20.3, 30.6, 1.0) + blob(20.0, 44.0, 0.6)
    prob = torch.from_numpy(heat / heat.sum())[None, None]
    global_xy = soft_argmax(torch.log(prob))[0][0, 0].numpy() * w
    local_xy = local_soft_argmax(prob, radius=3, search=None)[0, 0].numpy() * w
    assert abs(global_xy[1] - 35.6) < 1.0  # pulled about 5 px towards the other disc
    assert np.allclose(local_xy, [20.8, 31.1], atol=0.15)  # pixel centres are at +0.5
    # a stronger mode far from the global mean is ignored when the search window is narrow
    far = heat.copy()
    far[4, 58] = 2.0  # a sharp, stronger, far peak with little mass
    prob = torch.from_numpy(far / far.sum())[None, None]
    unguarded = local_soft_argmax(prob, radius=3, search=None)[0, 0].numpy() * w
    assert np.hypot(unguarded[0] - 58.5, unguarded[1] - 4.5) < 1.0
    centre = soft_argmax(torch.log(prob))[0][0, 0].numpy() * w
    near = local_soft_argmax(prob, radius=3, search=0.2)[0, 0].numpy() * w
    assert np.hypot(*(near - centre)) < 0.2 * w
    assert np.allclose(near, [20.8, 31.1], atol=0.3)


def test_a_lost_slice_is_never_localized_on():
    from spinepipe.localize.inference import nearest_decoded

    ok = np.array([True, False, False, True, True])
    assert [nearest_decoded(i, ok) for i in range(5)] == [0, 0, 3, 3, 4]
    assert nearest_decoded(2, None) == 2 and nearest_decoded(2, np.zeros(5, dtype=bool)) == 2


# --- joint decoding of the five levels of a series -------------------------------------------

LEVEL_CELLS = np.array([[28.0, 12.0], [30.0, 22.0], [31.0, 32.0], [31.0, 42.0], [29.0, 52.0]])  # x, y


def _level_maps(centres: np.ndarray, extra: dict[int, tuple[float, float, float]] | None = None,
                size: int = 64, sigma: float = 1.2) -> torch.Tensor:
    """One probability map per level (K, size, size): a blob on each level's cell centre, and
    for ``extra`` levels a second blob (x, y, share of the map) that the first one shares."""
    yy, xx = np.mgrid[0:size, 0:size]

    def blob(x, y):
        return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))

    maps = []
    for k, (x, y) in enumerate(centres):
        own = blob(x, y) / blob(x, y).sum()
        if extra and k in extra:
            ex, ey, share = extra[k]
            own = (1 - share) * own + share * blob(ex, ey) / blob(ex, ey).sum()
        own = own + 1e-7  # a softmax has full support
        maps.append(own / own.sum())
    return torch.from_numpy(np.stack(maps)).float()


def _frames(k: int = 5, rows_point_superior: bool = False, fov_mm: float = 200.0):
    """A sagittal image: rows (x) anterior -> posterior, columns (y) superior -> inferior,
    or inferior -> superior when ``rows_point_superior``."""
    from spinepipe.localize.decode import MapFrames

    down = 1.0 if rows_point_superior else -1.0
    return MapFrames(np.zeros((k, 3)), np.tile([0.0, fov_mm, 0.0], (k, 1)),
                     np.tile([0.0, 0.0, down * fov_mm], (k, 1)))


def _cells(xy: np.ndarray, size: int = 64) -> np.ndarray:
    return xy * size - 0.5  # map coordinates in [0, 1] -> cell index (centres at +0.5)


DECODE = {"radius": 3, "search": 0.05, "joint": True, "candidates": 4,
          "spacing_ratio": [0.6, 1.5], "spacing_mm": [20.0, 60.0]}


def test_joint_decoding_repairs_a_level_on_its_neighbours_disc():
    """Level 3's strongest peak sits on level 4's disc, a weaker one at its own place: the
    independent decoding puts L3/L4 on L4/L5, the joint decoding gives every level its own
    disc, ordered superior to inferior."""
    from spinepipe.localize.decode import decode_levels

    maps = _level_maps(LEVEL_CELLS, {2: (*LEVEL_CELLS[3], 0.8)})
    independent = _cells(decode_levels(maps, _frames(), **DECODE | {"joint": False}))
    assert np.hypot(*(independent[2] - LEVEL_CELLS[3])) < 0.5  # the swap
    joint = _cells(decode_levels(maps, _frames(), **DECODE))
    assert np.allclose(joint, LEVEL_CELLS, atol=0.3)
    assert (np.diff(joint[:, 1]) > 5).all()


def test_joint_ordering_follows_the_geometry_not_the_image_rows():
    """The same swap in an image whose rows run inferior to superior (L1/L2 at the bottom):
    repaired when the geometry says so; read with the usual orientation, the true
    positions would be out of order and are not what comes back."""
    from spinepipe.localize.decode import decode_levels

    flipped = LEVEL_CELLS * [1, -1] + [0, 63]  # cell y -> 63 - y
    maps = _level_maps(flipped, {2: (*flipped[3], 0.8)})
    frames = _frames(rows_point_superior=True)
    joint = decode_levels(maps, frames, **DECODE)
    assert np.allclose(_cells(joint), flipped, atol=0.3)
    assert (np.diff(frames.to_patient(joint)[:, 2]) < 0).all()  # superior to inferior in patient z
    assert not np.allclose(_cells(decode_levels(maps, _frames(), **DECODE)), flipped, atol=0.3)
    independent = _cells(decode_levels(maps, frames, **DECODE | {"joint": False}))
    assert np.hypot(*(independent[2] - flipped[3])) < 0.5


def test_joint_decoding_leaves_good_points_where_they_were():
    """A series with every level clear is decoded exactly as by the independent decoding; in
    a series with one swapped level, only that level moves."""
    from spinepipe.localize.decode import decode_levels

    rng = np.random.default_rng(0)
    centres = LEVEL_CELLS + rng.uniform(-0.4, 0.4, LEVEL_CELLS.shape)
    clear = _level_maps(centres)
    independent = local_soft_argmax(clear[None], 3, 0.05)[0].numpy()
    np.testing.assert_array_equal(decode_levels(clear, _frames(), **DECODE), independent)
    swapped = _level_maps(centres, {2: (*centres[3], 0.8)})
    before = local_soft_argmax(swapped[None], 3, 0.05)[0].numpy()
    after = decode_levels(swapped, _frames(), **DECODE)
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(after[keep], before[keep])
    assert np.hypot(*(_cells(after[2]) - centres[2])) < 0.3


# --- a foramen side put back in step with the canal ----------------------------------------

def _canal_reference(centres: np.ndarray, anterior_mm: float = 6.0) -> np.ndarray:
    """The canal's five points (K, 3, patient mm): the discs ``centres`` (cells) moved
    anteriorly, as the canal lies in front of the foramina's posterior edge."""
    frames = _frames()
    return frames.to_patient((centres + 0.5) / 64) - np.array([0.0, anterior_mm, 0.0])


def _decoded(centres: np.ndarray) -> np.ndarray:
    return (centres + 0.5) / 64  # cells -> map coordinates in [0, 1]


def test_a_side_with_two_levels_on_one_disc_is_put_back_in_step_with_the_canal():
    """L2/L3's heatmap is strongest on L3/L4's disc (0.8) with a weaker mode on its own: the
    decoded side has two levels on one disc; realigned with the canal, L2/L3 lands on its own
    disc and no other level moves."""
    from spinepipe.localize.decode import realign_to_reference

    maps = _level_maps(LEVEL_CELLS, {1: (*LEVEL_CELLS[2], 0.8)})
    decoded = _decoded(LEVEL_CELLS.copy())
    decoded[1] = _decoded(LEVEL_CELLS[2])  # the collapse
    uv, moved = realign_to_reference(maps, _frames(), decoded, _canal_reference(LEVEL_CELLS))
    assert moved == [1]
    assert np.hypot(*(_cells(uv[1]) - LEVEL_CELLS[1])) < 0.3
    np.testing.assert_array_equal(uv[[0, 2, 3, 4]], decoded[[0, 2, 3, 4]])


def test_a_skipped_disc_is_put_back_in_step_with_the_canal():
    """L1/L2 and L2/L3 each one disc too high (L1/L2 above the canal's first level, a gap of
    two discs between L2/L3 and L3/L4): both decoded again on their own disc."""
    from spinepipe.localize.decode import realign_to_reference

    above = LEVEL_CELLS[0] - [0.0, 10.0]
    maps = _level_maps(LEVEL_CELLS, {0: (*above, 0.7), 1: (*LEVEL_CELLS[0], 0.7)})
    decoded = _decoded(np.stack([above, LEVEL_CELLS[0], *LEVEL_CELLS[2:]]))
    uv, moved = realign_to_reference(maps, _frames(), decoded, _canal_reference(LEVEL_CELLS))
    assert moved == [0, 1]
    assert np.all(np.hypot(*(_cells(uv[:2]) - LEVEL_CELLS[:2]).T) < 0.3)


def test_realignment_leaves_alone_what_it_cannot_settle():
    """Unchanged: an evenly spaced side (even one counted a whole level off the canal: which
    of the two is right is a counting question), a side off an unevenly spaced canal, and a
    level whose heatmap has no support near the canal's."""
    from spinepipe.localize.decode import realign_to_reference

    canal = _canal_reference(LEVEL_CELLS)
    shifted = LEVEL_CELLS + [0.0, 10.0]  # every level one disc lower, a weaker mode in step
    maps = _level_maps(shifted, {k: (*LEVEL_CELLS[k], 0.3) for k in range(5)})
    uv, moved = realign_to_reference(maps, _frames(), _decoded(shifted), canal)
    assert moved == [] and np.array_equal(uv, _decoded(shifted))

    collapsed = LEVEL_CELLS.copy()
    collapsed[1] = LEVEL_CELLS[2]
    maps = _level_maps(LEVEL_CELLS, {1: (*LEVEL_CELLS[2], 0.8)})
    uneven_canal = canal.copy()
    uneven_canal[3] = canal[2]  # the canal itself with two levels on one disc
    uv, moved = realign_to_reference(maps, _frames(), _decoded(collapsed), uneven_canal)
    assert moved == [] and np.array_equal(uv, _decoded(collapsed))

    no_support = _level_maps(collapsed)  # L2/L3's heatmap only on L3/L4's disc
    uv, moved = realign_to_reference(no_support, _frames(), _decoded(collapsed), canal)
    assert moved == [] and np.array_equal(uv, _decoded(collapsed))


class _HeatmapModel(torch.nn.Module):
    """A point model that answers the same probability maps (K, h, w) for every image."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.log(maps)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.logits[None].expand(len(images), -1, -1, -1)}


@pytest.mark.parametrize("joint", [True, False])
def test_localizer_decodes_the_sagittal_levels_jointly(tiny_dataset, tmp_path, joint):
    """Through the localizer, with the series' DICOM geometry: a canal and foramen heatmap
    with level 3 on level 4's disc gives ordered, distinct levels with ``decode.joint``, and
    the swap without it (the old behaviour stays available for comparison)."""
    dataset, _ = tiny_dataset
    instances, series, index = _prepare(dataset, "test", tmp_path)
    cells = np.array([[16.0, 5.0], [16.0, 10.0], [16.0, 15.0], [16.0, 20.0], [16.0, 25.0]])  # 32-cell maps
    maps = _level_maps(cells, {2: (*cells[3], 0.8)}, size=32, sigma=0.7)
    models = {"sagittal_t2": FoldModels([_HeatmapModel(maps)], []),
              "sagittal_t1": FoldModels([_HeatmapModel(maps)], []),
              "axial_t2": FoldModels([PointModel("resnet10t", 2).eval()], [])}
    cfg = CFG | {"decode": DECODE | {"joint": joint}}
    localizer = StudyLocalizer(models, StackCache(index), stack_geometries(instances, series),
                               slice_reader(instances), cfg)
    studies = sorted(series["study_id"].unique().to_list())
    predictions, _ = localize_split(studies, series, lambda sid: localizer)
    sagittal = predictions.filter(pl.col("series_description").str.starts_with("Sagittal"))
    assert sagittal.height == len(studies) * 15
    cache = StackCache(index)
    for (_, _side), group in sagittal.group_by("series_id", "side"):
        group = group.sort("level")
        scale = cache.get(group["series_id"][0])["scale"]
        found = np.stack([group["x"].to_numpy() / scale[0], group["y"].to_numpy() / scale[1]], axis=1)
        expected = (cells + 0.5) * 2  # map cell -> 64-pixel stack image
        if joint:
            assert np.allclose(found, expected, atol=0.5)
        else:
            assert np.allclose(found[2], expected[3], atol=0.5)


def test_axial_samples_show_left_and_right_as_the_patient_has_them(quirky_dataset, tmp_path):
    """Feet-first axial stacks are mirrored images (patient left on the image's left): their
    crops are flipped back, so the left recess is on the image's right in every sample and
    the point model never learns a side from the scanner's convention."""
    from spinepipe.localize.pipeline import mirrored_series
    from spinepipe.xref import annotation_points, axial_cross_reference, level_points

    dataset, _ = quirky_dataset
    instances, series, index = _prepare(dataset, "train", tmp_path)
    geometries = stack_geometries(instances, series)
    coords = read_coordinates(dataset / "train_label_coordinates.csv")
    xref = axial_cross_reference(level_points(annotation_points(coords, geometries), geometries),
                                 series, geometries, None)
    mirrored = mirrored_series(instances, series)
    quirks = pl.read_csv(dataset / "quirks.csv")
    feet_first = set(quirks.filter(pl.col("quirk") == "feet_first")["study_id"].to_list())
    axial = series.filter(pl.col("series_description") == "Axial T2")
    assert mirrored == set(axial.filter(pl.col("study_id").is_in(list(feet_first)))["series_id"])
    assert mirrored, "the quirky dataset has feet-first studies"

    def left_of_right(samples):
        return [s.points[0, 0] > s.points[1, 0] for s in samples if s.mask.all()]

    as_stored = point_samples("axial_t2", coords, StackCache(index), series, xref, 32)
    canonical = point_samples("axial_t2", coords, StackCache(index), series, xref, 32,
                              mirrored=mirrored)
    assert not all(left_of_right(as_stored))  # the raw images disagree on the side
    assert len(left_of_right(canonical)) == len(left_of_right(as_stored)) > 0
    assert all(left_of_right(canonical))


def test_flipping_a_crop_moves_its_points_with_it_and_back():
    """The flip the training samples and inference share: points follow the pixels (centres
    at integer x) and a second flip restores both, so a point found on a flipped crop maps
    back to the pixel it was found on."""
    from spinepipe.localize.samples import flip_columns

    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    points = np.array([[20.0, 10.0], [9.5, 11.0]])
    flipped, moved = flip_columns(image, points)
    assert np.array_equal(flipped[:, ::-1], image)
    assert np.allclose(moved[:, 0], 31 - points[:, 0])
    back = flip_columns(flipped, moved)
    assert np.array_equal(back[0], image) and np.allclose(back[1], points)


def test_out_of_fold_error_is_measured_per_axis_and_slice(tiny_train):
    """oof_error.json's figures: a prediction 3 pixels right and one slice over gives that
    much column error and a slice offset of one; the rest are exact."""
    from spinepipe.localize.coordinates import error_summary, localization_errors

    dataset, instances, series, _ = tiny_train
    coords = read_coordinates(dataset / "train_label_coordinates.csv").filter(
        pl.col("condition") == "Spinal Canal Stenosis")
    geometries = stack_geometries(instances, series)
    predicted = coords.with_columns(
        slice_index=pl.struct("series_id", "instance_number").map_elements(
            lambda r: geometries[r["series_id"]].index_of(r["instance_number"]), return_dtype=pl.Int64))
    first = pl.int_range(pl.len()) == 0
    moved = predicted.with_columns(x=pl.when(first).then(pl.col("x") + 3).otherwise(pl.col("x")),
                                   slice_index=pl.when(first).then(pl.col("slice_index") + 1)
                                   .otherwise(pl.col("slice_index")))
    # the moved prediction stays on its slice's plane: its 3D point is read off that slice
    moved = moved.with_columns(instance_number=pl.struct("series_id", "slice_index").map_elements(
        lambda r: int(geometries[r["series_id"]].instance_numbers[r["slice_index"]]), return_dtype=pl.Int64))
    errors = localization_errors(coords, moved, geometries)
    assert errors.height == coords.height
    spacing = series.filter(pl.col("series_id") == coords["series_id"][0])["pixel_spacing_mm"][0]
    head, rest = errors.head(1), errors.tail(errors.height - 1)
    assert head["slice_offset"][0] == 1 and rest["slice_offset"].abs().max() == 0
    assert abs(head["dx_mm"][0] - 3 * spacing) < 0.05 * spacing and abs(head["dy_mm"][0]) < 0.05 * spacing
    assert rest["distance_mm"].max() < 1e-3
    summary = error_summary(errors)
    assert summary["spinal"]["n"] == coords.height and summary["foraminal"]["n"] == 0
    assert summary["spinal"]["slice"]["q99"] > 0 and summary["spinal"]["axis_mm"]["q50"] < 1e-3
    assert summary["foraminal"]["axis_mm"] is None


class _SharpWhereBright(torch.nn.Module):
    """A stand-in point model: each of its 5 heatmaps is the image itself, so a slice with a
    bright spot gives a sharp peak and a flat slice a diffuse one."""

    def forward(self, images):
        return {"logits": images.repeat(1, 5, 1, 1) * 20.0}


def test_foramen_slices_move_to_the_centre_of_the_model_response():
    from spinepipe.localize.inference import refine_foramen_slices

    stack = np.zeros((15, 16, 16), dtype=np.float32)
    stack[8:11, 7, 7] = 1.0  # the foramen shows on slices 8, 9 and 10
    models = [_SharpWhereBright()]
    start = np.array([[7, 7]] * 5)  # a fixed-offset guess two slices short
    assert (refine_foramen_slices(models, stack, start, 3) == 9).all()
    # a guess too far off for the window keeps to the side of the response it sees
    assert (refine_foramen_slices(models, stack, np.array([[4, 4]] * 5), 3) <= 8).all()
    # a lost slice never becomes the choice
    slice_ok = np.ones(15, dtype=bool)
    slice_ok[9] = False
    refined = refine_foramen_slices(models, stack, start, 3, slice_ok)
    assert set(refined.ravel().tolist()) <= {8, 10}


def _two_block_geometry(n_per_block=6, size=16):
    """An axial series of two per-level blocks: the second tilted by 10 degrees."""
    from spinepipe.geometry import StackGeometry

    tilt = np.deg2rad(10.0)
    ipp, iop = [], []
    for i in range(n_per_block):
        ipp.append([0.0, 0.0, 4.0 * i])
        iop.append([1, 0, 0, 0, 1, 0])
    for i in range(n_per_block):
        ipp.append([0.0, 0.0, 40.0 + 4.0 * i])
        iop.append([1, 0, 0, 0, np.cos(tilt), np.sin(tilt)])
    n = 2 * n_per_block
    return StackGeometry.from_arrays(np.arange(1, n + 1), ipp, iop, [[1.0, 1.0]] * n,
                                     [size] * n, [size] * n)


def test_axial_slice_moves_to_the_recess_response_within_its_own_block():
    from spinepipe.localize.inference import refine_axial_slice

    geometry = _two_block_geometry()
    stack = np.zeros((12, 16, 16), dtype=np.float32)
    stack[3:5, 8, 8] = 1.0  # the level shows on slices 3 and 4 of the first block
    models = [_SharpWhereBright()]
    assert refine_axial_slice(models, stack, geometry, 2, (8.0, 8.0), 16, 2) in (3, 4)
    # the neighbouring block lights up: a level at the edge of the first block stays in it
    stack = np.zeros((12, 16, 16), dtype=np.float32)
    stack[6:8, 8, 8] = 1.0
    assert refine_axial_slice(models, stack, geometry, 5, (8.0, 8.0), 16, 2) <= 5
    # a lost slice is never chosen
    stack = np.zeros((12, 16, 16), dtype=np.float32)
    stack[3, 8, 8] = 1.0
    slice_ok = np.ones(12, dtype=bool)
    slice_ok[3] = False
    assert refine_axial_slice(models, stack, geometry, 2, (8.0, 8.0), 16, 2, slice_ok) != 3


def _sagittal_geometry(n: int = 15, spacing: float = 4.0):
    """Sagittal slices along patient x (towards the patient's left), slice i at x = 4 i - 28."""
    from spinepipe.geometry import StackGeometry

    ipp = [[spacing * i - spacing * (n // 2), -100.0, 100.0] for i in range(n)]
    iop = [[0, 1, 0, 0, 0, -1]] * n
    return StackGeometry.from_arrays(np.arange(1, n + 1), ipp, iop, [[1.0, 1.0]] * n, [64] * n, [64] * n)


def test_canal_slice_follows_the_mid_line_between_the_recess_points():
    """The canal slice is the one through the midpoint of each level's left and right recess
    points; a level without them follows the line through the others; lost slices are skipped."""
    from spinepipe.localize.inference import midline_slices

    geometry = _sagittal_geometry()
    assert midline_slices(geometry, {}) == {}

    def pair(x_mid: float, z: float) -> np.ndarray:  # recesses 8 mm either side of the mid-line
        return np.array([[x_mid + 8.0, 0.0, z], [x_mid - 8.0, 0.0, z]])

    def slice_x(chosen: dict[int, int]) -> dict[int, float]:  # the chosen slices' patient x
        return {k: float(geometry.ipp[i][0]) for k, i in chosen.items()}

    # mid-line 8 mm to the patient's left of the stack centre at every level
    assert slice_x(midline_slices(geometry, {k: pair(8.0, -30.0 * k) for k in range(5)})) == {k: 8.0 for k in range(5)}
    # a scoliotic drift of one slice per level, with levels 1 and 4 missing from the axial stack
    chosen = midline_slices(geometry, {k: pair(-4.0 * k, -30.0 * k) for k in (0, 2, 3)})
    assert slice_x(chosen) == {k: -4.0 * k for k in range(5)}
    # one level alone: the others take its mid-line
    assert slice_x(midline_slices(geometry, {2: pair(-8.0, -60.0)})) == {k: -8.0 for k in range(5)}
    # a lost slice is never chosen: the nearest decoded one is
    slice_ok = np.ones(15, dtype=bool)
    lost = midline_slices(geometry, {0: pair(8.0, 0.0)})[0]
    slice_ok[lost] = False
    chosen = midline_slices(geometry, {k: pair(8.0, -30.0 * k) for k in range(5)}, slice_ok)
    assert set(slice_x(chosen).values()) <= {4.0, 12.0}


@pytest.mark.parametrize("from_axial", [True, False])
def test_localizer_moves_the_canal_slice_onto_the_axial_mid_line(tiny_dataset, tmp_path, from_axial):
    """Through the localizer on the tiny dataset's own DICOM geometry: with
    ``canal_slice_from_axial`` every canal row sits on the Sagittal T2 slice nearest the midpoint
    of its level's two recess points (and says so); without it, on the middle of the stack."""
    dataset, _ = tiny_dataset
    instances, series, index = _prepare(dataset, "test", tmp_path)
    cells = np.array([[16.0, 5.0], [16.0, 10.0], [16.0, 15.0], [16.0, 20.0], [16.0, 25.0]])
    maps = _level_maps(cells, {}, size=32, sigma=0.7)
    models = {"sagittal_t2": FoldModels([_HeatmapModel(maps)], []),
              "sagittal_t1": FoldModels([_HeatmapModel(maps)], []),
              "axial_t2": FoldModels([PointModel("resnet10t", 2).eval()], [])}
    geometries = stack_geometries(instances, series)
    localizer = StudyLocalizer(models, StackCache(index), geometries, slice_reader(instances),
                               CFG | {"decode": DECODE, "canal_slice_from_axial": from_axial})
    studies = sorted(series["study_id"].unique().to_list())
    predictions, _ = localize_split(studies, series, lambda sid: localizer)
    canal = predictions.filter(pl.col("condition") == "Spinal Canal Stenosis")
    recess = predictions.filter(pl.col("condition").str.contains("Subarticular"))
    assert canal.height == 5 * len(studies) and recess.height > 0
    moved = 0
    for r in canal.iter_rows(named=True):
        pair = recess.filter((pl.col("study_id") == r["study_id"]) & (pl.col("level") == r["level"]))
        if pair.height != 2:
            continue
        midpoint = np.mean([geometries[p["series_id"]].to_patient(p["slice_index"], p["x"], p["y"])
                            for p in pair.iter_rows(named=True)], axis=0)
        on_midline, _ = geometries[r["series_id"]].nearest(midpoint)
        expected = on_midline if from_axial else r["geometric_slice"]
        assert r["slice_index"] == expected
        moved += r["slice_index"] != r["geometric_slice"]
    assert moved > 0 if from_axial else moved == 0  # the tiny studies are not all centred
    assert (canal["slice_method"] == "axial_midline").any() == from_axial


def test_a_canal_series_counted_one_level_off_is_found_by_both_foramen_sides():
    """The canal's five points one level superior to where both foramen sides put the levels:
    a shift of -1; in agreement, or with the foramen sides disagreeing between themselves, or
    with a single level off (the joint decoding's job), no shift."""
    from spinepipe.localize.inference import canal_level_shift

    z = -32.0 * np.arange(5)  # patient z: L1/L2 highest

    def points(zs: np.ndarray, x: float) -> np.ndarray:
        return np.stack([np.full(5, x), np.full(5, 10.0), zs], axis=1)

    left, right = points(z, 21.0), points(z, -21.0)
    assert canal_level_shift(points(z + 1.5, 0.0), left, right) == 0
    assert canal_level_shift(points(z + 32.0, 0.0), left, right) == -1
    assert canal_level_shift(points(z - 64.0, 0.0), left, right) == 2
    assert canal_level_shift(points(z + 32.0, 0.0), left, points(z - 32.0, -21.0)) == 0
    one_off = z.copy()
    one_off[2] += 32.0
    assert canal_level_shift(points(one_off, 0.0), left, right) == 0


def test_localizer_relabels_a_canal_series_counted_one_level_off(tiny_dataset, tmp_path, caplog):
    """Through the localizer: Sagittal T2 heatmaps that put every level one disc superior while
    both foramen sides are right give back the canal points of the right count: levels found
    on the canal series where the correct heatmaps put them, the uncovered L5/S1 from the
    foramina, within a few mm."""
    dataset, _ = tiny_dataset
    instances, series, index = _prepare(dataset, "test", tmp_path)
    cells = np.array([[16.0, 5.0], [16.0, 10.0], [16.0, 15.0], [16.0, 20.0], [16.0, 25.0]])
    geometries = stack_geometries(instances, series)

    def canal_points(canal_cells: np.ndarray) -> dict[tuple[int, str], np.ndarray]:
        maps = {cells.tobytes(): _level_maps(cells, {}, size=32, sigma=0.7),
                canal_cells.tobytes(): _level_maps(canal_cells, {}, size=32, sigma=0.7)}
        models = {"sagittal_t2": FoldModels([_HeatmapModel(maps[canal_cells.tobytes()])], []),
                  "sagittal_t1": FoldModels([_HeatmapModel(maps[cells.tobytes()])], []),
                  "axial_t2": FoldModels([PointModel("resnet10t", 2).eval()], [])}
        localizer = StudyLocalizer(models, StackCache(index), geometries, slice_reader(instances),
                                   CFG | {"decode": DECODE | {"spacing_mm": [5.0, 80.0]}})
        studies = sorted(series["study_id"].unique().to_list())
        predictions = localize_split(studies, series, lambda sid: localizer)[0]
        return {(r["study_id"], r["level"]): geometries[r["series_id"]].to_patient(r["slice_index"], r["x"], r["y"])
                for r in predictions.filter(pl.col("condition") == "Spinal Canal Stenosis").iter_rows(named=True)}

    with caplog.at_level("WARNING"):
        right = canal_points(cells)
    assert "relabelled" not in caplog.text
    shifted = cells - [0.0, 5.0]  # every level one disc (5 map cells) superior; L1/L2 at the top edge
    shifted[0, 1] = 0.5
    with caplog.at_level("WARNING"):
        repaired = canal_points(shifted)
    assert "-1 level(s) off" in caplog.text
    assert right.keys() == repaired.keys()
    for (study_id, level), point in right.items():
        ordered = np.stack([right[(study_id, name)] for name in ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")])
        spacing = np.median(np.linalg.norm(np.diff(ordered, axis=0), axis=1))
        distance = np.linalg.norm(repaired[(study_id, level)] - point)
        # found levels exactly; the uncovered one well inside its own level (the crafted T1 and
        # T2 maps are not the same anatomy, so the foramina only approximate it)
        assert distance < (0.5 if level != "L5/S1" else 0.35 * spacing), (study_id, level, distance, spacing)
