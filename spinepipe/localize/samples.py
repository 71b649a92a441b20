"""Training samples for the localization models, from annotations and cached stacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import polars as pl

from spinepipe.constants import (
    CONDITION_NAMES,
    LEVEL_NAMES,
    LEVELS,
)
from spinepipe.localize.settings import TASK_SERIES
from spinepipe.localize.stacks import StackCache

LEVEL_INDEX = {LEVEL_NAMES[lv]: i for i, lv in enumerate(LEVELS)}
TASK_OF = {description: task for task, description in TASK_SERIES.items()}  # series description -> task
TASK_CONDITIONS = {
    "sagittal_t2": {CONDITION_NAMES["spinal_canal_stenosis"]: None},
    "sagittal_t1": {CONDITION_NAMES["left_neural_foraminal_narrowing"]: "left",
                    CONDITION_NAMES["right_neural_foraminal_narrowing"]: "right"},
    "axial_t2": {CONDITION_NAMES["left_subarticular_stenosis"]: "left",
                 CONDITION_NAMES["right_subarticular_stenosis"]: "right"},
}
POINTS_PER_TASK = {"sagittal_t2": 5, "sagittal_t1": 5, "axial_t2": 2}
SLICE_TARGETS = {"sagittal_t2": 5, "sagittal_t1": 10, "axial_t2": 5}
SIDES = ("left", "right")


@dataclass
class PointSample:
    """A training sample; its pixels are read from the stack file when used (``image``), so
    a sample list costs its points, not its images."""

    study_id: int
    load: Callable[[], np.ndarray]    # -> (H, W) float32 in [0, 1]
    points: np.ndarray                # (K, 2) x, y in image pixels
    mask: np.ndarray                  # (K,) bool
    mm_per_px: float
    meta: dict = field(default_factory=dict)
    group: int = -1                   # samples of one annotated slice and its neighbours share it

    @property
    def image(self) -> np.ndarray:
        return self.load()


@dataclass
class SliceSample:
    study_id: int
    load: Callable[[], np.ndarray]    # -> (S, h, w) float32, read when used
    targets: np.ndarray               # (T,) slice index, -1 where unknown

    @property
    def stack(self) -> np.ndarray:
        return self.load()


def crop_corner(center_xy: tuple[float, float], size: int) -> np.ndarray:
    """Top-left corner (x, y) of the square ``crop`` of ``size`` around ``center_xy``."""
    return np.array([int(round(center_xy[0])) - size // 2, int(round(center_xy[1])) - size // 2],
                    dtype=np.float64)


def crop(image: np.ndarray, center_xy: tuple[float, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crop centred on ``center_xy`` (zero padded); returns it and its top-left corner."""
    h, w = image.shape
    x0, y0 = (int(v) for v in crop_corner(center_xy, size))
    out = np.zeros((size, size), dtype=np.float32)
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + size, w), min(y0 + size, h)
    if xe > xs and ye > ys:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = image[ys:ye, xs:xe]
    return out, np.array([x0, y0], dtype=np.float64)


def _sagittal_slice(cache: StackCache, series_id: int, index: int) -> np.ndarray:
    return cache.slice(series_id, index).astype(np.float32)


def _axial_crop(cache: StackCache, series_id: int, index: int, centre_xy: tuple[float, float],
                size: int, mirror: bool) -> np.ndarray:
    image = crop(cache.slice(series_id, index).astype(np.float32), centre_xy, size)[0]
    return np.ascontiguousarray(image[:, ::-1]) if mirror else image


def _downsampled(cache: StackCache, series_id: int, size: int) -> np.ndarray:
    return downsample_stack(cache.get(series_id)["images"], size)


def _slice_index(stack: dict, instance_number: int) -> int | None:
    matches = np.flatnonzero(stack["instance_numbers"] == instance_number)
    return int(matches[0]) if matches.size else None


def _decoded(stack: dict, index: int) -> bool:
    """False for a slice that could not be decoded (an all-zero image in the stack)."""
    return bool(stack["slice_ok"][index]) if "slice_ok" in stack else True


def flip_points(points: np.ndarray, width: int) -> np.ndarray:
    """(K, 2) points mirrored left-right in an image ``width`` pixels wide (pixel centres at
    integer x, as in the annotations). Its own inverse."""
    flipped = points.copy()
    flipped[..., 0] = width - 1 - points[..., 0]
    return flipped


def flip_columns(image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image mirrored left-right and its (K, 2) points with it. Its own inverse."""
    return np.ascontiguousarray(image[:, ::-1]), flip_points(points, image.shape[1])


def point_samples(task: str, coordinates: pl.DataFrame, cache: StackCache, series: pl.DataFrame,
                  xref: pl.DataFrame | None, axial_crop: int,
                  neighbours: int = 0, mirrored: frozenset[int] = frozenset()) -> list[PointSample]:
    """One sample per annotated slice (sagittal) or per annotated level crop (axial).

    Axial crops of a ``mirrored`` series (``StackGeometry.mirrored``: feet-first or flipped,
    patient left on the image's left) are flipped back, so the left recess channel always
    learns the patient's left, whatever the scanner wrote.

    ``neighbours`` adds the slices next to an annotated sagittal slice with the same points:
    the canal and the foramina are tubes crossing several slices, and it teaches the model
    to tolerate a slice choice one off (slice jitter); the samples of one annotated slice share
    a ``group``. Slices that could not be decoded (``slice_ok`` False, all zeros) give no sample.
    """
    conditions = TASK_CONDITIONS[task]
    wanted = coordinates.filter(pl.col("condition").is_in(list(conditions)))
    spacing = dict(series.select("series_id", "pixel_spacing_mm").iter_rows())
    samples: list[PointSample] = []
    if task.startswith("sagittal"):
        # sorted and order-keeping: the sample order (hence the shuffles) is the same every run
        for (series_id, instance), group in wanted.sort("study_id", "series_id", "instance_number").group_by(
                "series_id", "instance_number", maintain_order=True):
            if series_id not in cache:
                continue
            stack = cache.meta(series_id)
            index = _slice_index(stack, instance)
            if index is None:
                continue
            points = np.zeros((5, 2))
            mask = np.zeros(5, dtype=bool)
            for r in group.iter_rows(named=True):
                k = LEVEL_INDEX[r["level"]]
                points[k] = (r["x"] / stack["scale"][0], r["y"] / stack["scale"][1])
                mask[k] = True
            annotated_slice = len(samples)  # group id: the first sample's position
            for offset in range(-neighbours, neighbours + 1):
                if 0 <= index + offset < len(stack["slice_ok"]) and _decoded(stack, index + offset):
                    samples.append(PointSample(
                        int(group["study_id"][0]),
                        partial(_sagittal_slice, cache, series_id, index + offset),
                        points, mask, spacing[series_id] * float(stack["scale"][0]),
                        meta={"offset": offset}, group=annotated_slice))
        return samples
    # axial: a crop around the level's cross-referenced point, left and right recess points
    centres = {(r["study_id"], r["level"], r["series_id"]): (r["x"], r["y"], r["instance_number"])
               for r in (xref.iter_rows(named=True) if xref is not None else [])}
    for (study_id, level, series_id), group in wanted.sort("study_id", "level", "series_id").group_by(
            "study_id", "level", "series_id", maintain_order=True):
        key = (study_id, level, series_id)
        if series_id not in cache or key not in centres:
            continue
        stack = cache.meta(series_id)
        cx, cy, instance = centres[key]
        index = _slice_index(stack, instance)
        if index is None or not _decoded(stack, index):
            continue
        scale = stack["scale"]
        centre = (cx / scale[0], cy / scale[1])
        corner = crop_corner(centre, axial_crop)
        points = np.zeros((2, 2))
        mask = np.zeros(2, dtype=bool)
        for r in group.iter_rows(named=True):
            side = SIDES.index(conditions[r["condition"]])
            points[side] = (r["x"] / scale[0] - corner[0], r["y"] / scale[1] - corner[1])
            mask[side] = True
        mirror = series_id in mirrored
        if mirror:
            points = flip_points(points, axial_crop)
        samples.append(PointSample(int(study_id),
                                   partial(_axial_crop, cache, series_id, index, centre, axial_crop, mirror),
                                   points, mask, spacing[series_id] * float(scale[0]), group=len(samples)))
    return samples


def downsample_stack(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(im.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
                     for im in images])


def slice_samples(task: str, coordinates: pl.DataFrame, cache: StackCache, size: int) -> list[SliceSample]:
    """One sample per annotated series: the annotated slice of each level (and side)."""
    conditions = TASK_CONDITIONS[task]
    wanted = coordinates.filter(pl.col("condition").is_in(list(conditions)))
    samples = []
    for (study_id, series_id), group in wanted.sort("study_id", "series_id").group_by(
            "study_id", "series_id", maintain_order=True):
        if series_id not in cache:
            continue
        stack = cache.meta(series_id)
        targets = np.full(SLICE_TARGETS[task], -1, dtype=np.int64)
        for r in group.iter_rows(named=True):
            index = _slice_index(stack, r["instance_number"])
            if index is None or not _decoded(stack, index):  # a lost slice is no target
                continue
            k = LEVEL_INDEX[r["level"]]
            side = conditions[r["condition"]]
            if task == "sagittal_t1":
                k = k * 2 + SIDES.index(side)
            targets[k] = index
        samples.append(SliceSample(int(study_id), partial(_downsampled, cache, series_id, size), targets))
    return samples
