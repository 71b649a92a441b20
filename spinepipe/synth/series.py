"""Acquisition geometry of the synthetic series: which slices, where, in which order.

Sagittal stacks run across the patient (normal toward patient right), the image rows from
anterior to posterior and the columns from superior to inferior. Axial series are either
per-level blocks tilted to follow each disc, or one continuous stack. Feet-first studies get
their axial images mirrored left-right (row direction toward patient right) and their
stacks acquired in the opposite direction: the trap that only positions, never the image or
the instance order, resolve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from spinepipe.constants import AXIAL_T2, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from spinepipe.geometry import SlicePlane, slice_normal
from spinepipe.synth.anatomy import SpineAnatomy, rotation_matrix


@dataclass
class SeriesPlan:
    """Everything needed to render and write one series."""

    series_id: int
    description: str
    contrast: str                     # "T1", "T2" or "STIR"
    rows: int
    columns: int
    pixel_spacing: float
    slice_thickness: float
    spacing: float
    planes: list[SlicePlane]          # in acquisition (instance) order
    instance_numbers: list[int]
    axial_mode: str = ""              # "blocks" or "stack" for axial series
    flags: dict[str, bool] = field(default_factory=dict)

    @property
    def iop(self) -> NDArray[np.float64]:
        return np.concatenate([self.planes[0].row_dir, self.planes[0].col_dir])


def _plane_at(center: NDArray, row_dir: NDArray, col_dir: NDArray, size: int,
              spacing: float) -> SlicePlane:
    """Slice whose centre pixel lies on ``center``."""
    half = (size - 1) / 2.0
    ipp = center - half * spacing * row_dir - half * spacing * col_dir
    return SlicePlane(ipp, row_dir, col_dir, np.array([spacing, spacing]))


def _instance_numbers(n: int, rng: np.random.Generator, quirks: dict) -> tuple[list[int], dict]:
    start = 1
    flags = {"instance_offset": False, "instance_jumps": False}
    if rng.random() < quirks["instance_offset"]:
        start = int(rng.integers(2, 1000))
        flags["instance_offset"] = True
    steps = np.ones(n, dtype=int)
    if rng.random() < quirks["instance_jumps"] and n > 2:
        jumps = rng.random(n) < 0.2
        jumps[0] = False
        jumps[int(rng.integers(1, n))] = True
        steps[jumps] += rng.integers(1, 5, jumps.sum())
        flags["instance_jumps"] = True
    numbers = start - 1 + np.cumsum(steps)
    return [int(i) for i in numbers], flags


def _finish(planes: list[SlicePlane], rng: np.random.Generator, quirks: dict,
            feet_first: bool) -> tuple[list[SlicePlane], list[int], dict]:
    """Apply acquisition-order quirks: returns planes in instance order and their numbers."""
    reverse = rng.random() < quirks["reversed_order"]
    if reverse != feet_first:  # feet-first acquires the other way round; both cancel out
        planes = planes[::-1]
    numbers, flags = _instance_numbers(len(planes), rng, quirks)
    flags["reversed_order"] = reverse
    return planes, numbers, flags


def plan_sagittal(anatomy: SpineAnatomy, description: str, contrast: str, series_id: int,
                  cfg: dict, quirks: dict, feet_first: bool,
                  rng: np.random.Generator) -> SeriesPlan:
    size = int(rng.choice(cfg["matrix"]))
    fov = rng.uniform(*cfg["fov_mm"])
    n = int(rng.integers(cfg["slices"][0], cfg["slices"][1] + 1))
    spacing = rng.uniform(*cfg["spacing_mm"])
    tilt = rotation_matrix(0.0, rng.uniform(-3, 3), rng.uniform(-3, 3))
    row_dir = tilt @ np.array([0.0, 1.0, 0.0])    # anterior -> posterior
    col_dir = tilt @ np.array([0.0, 0.0, -1.0])   # superior -> inferior
    normal = slice_normal(np.concatenate([row_dir, col_dir]))
    mid = anatomy.level_center(2)
    center = mid + rng.uniform(-15, 15) * row_dir + rng.uniform(-15, 15) * col_dir
    center = center - 15.0 * row_dir  # the vertebral bodies sit in front of the canal
    # put the mid-line somewhere between two slices or on one, as scanners do
    center = center + rng.uniform(-0.5, 0.5) * spacing * normal
    offsets = (np.arange(n) - (n - 1) / 2.0) * spacing
    planes = [_plane_at(center + t * normal, row_dir, col_dir, size, fov / size)
              for t in offsets]
    planes, numbers, flags = _finish(planes, rng, quirks, feet_first)
    return SeriesPlan(series_id, description, contrast, size, size, fov / size,
                      spacing - rng.uniform(0.0, 0.5), spacing, planes, numbers, flags=flags)


def _axial_axes(normal: NDArray, lateral: NDArray) -> tuple[NDArray, NDArray]:
    """Rows toward patient left, columns toward posterior, in the plane normal to ``normal``."""
    row_dir = lateral - (lateral @ normal) * normal
    row_dir /= np.linalg.norm(row_dir)
    return row_dir, np.cross(normal, row_dir)


def plan_axial(anatomy: SpineAnatomy, series_id: int, mode: str, cfg: dict, quirks: dict,
               feet_first: bool, rng: np.random.Generator) -> SeriesPlan:
    size = int(rng.choice(cfg["matrix"]))
    fov = rng.uniform(*cfg["fov_mm"])
    ps = fov / size
    lateral = anatomy.lateral_axis
    centers = [anatomy.level_center(k) for k in range(len(LEVELS))]
    shift = rng.uniform(-10, 10, 3)
    planes: list[SlicePlane] = []
    if mode == "blocks":
        spacing = rng.uniform(*cfg["block_spacing_mm"])
        for k, center in enumerate(centers):  # superior to inferior
            tilt = rotation_matrix(rng.uniform(-2, 2), rng.uniform(-2, 2), 0.0)
            normal = tilt @ anatomy.disc_normal(k)
            row_dir, col_dir = _axial_axes(normal, lateral)
            n = int(rng.integers(cfg["block_slices"][0], cfg["block_slices"][1] + 1))
            along = (np.arange(n)[::-1] - (n - 1) / 2.0) * spacing + rng.uniform(-0.4, 0.4) * spacing
            in_plane = center + (shift - (shift @ normal) * normal)
            planes += [_plane_at(in_plane + t * normal, row_dir, col_dir, size, ps) for t in along]
    else:
        spacing = rng.uniform(*cfg["stack_spacing_mm"])
        normal = anatomy.rotation @ rotation_matrix(rng.uniform(-4, 4), 0.0, 0.0) @ np.array([0.0, 0.0, 1.0])
        row_dir, col_dir = _axial_axes(normal, lateral)
        heights = np.array([c @ normal for c in centers])
        top, bottom = heights.max() + 15.0, heights.min() - 15.0
        n = int(np.ceil((top - bottom) / spacing)) + 1
        mean_center = np.mean(centers, axis=0) + shift
        base = mean_center - (mean_center @ normal) * normal
        planes = [_plane_at(base + (top - i * spacing) * normal, row_dir, col_dir, size, ps)
                  for i in range(n)]
    if feet_first:
        # same slab positions, mirrored rows: normal flips, and acquisition runs upward
        mirrored = []
        for p in planes:
            row_dir, col_dir = -p.row_dir, p.col_dir
            center = p.to_patient((size - 1) / 2.0, (size - 1) / 2.0)
            mirrored.append(_plane_at(center, row_dir, col_dir, size, ps))
        planes = mirrored
    planes, numbers, flags = _finish(planes, rng, quirks, feet_first)
    return SeriesPlan(series_id, AXIAL_T2, "T2", size, size, ps, spacing - rng.uniform(0.0, 0.5),
                      spacing, planes, numbers, axial_mode=mode, flags=flags)


def plan_study_series(anatomy: SpineAnatomy, series_ids: list[int], cfg: dict,
                      feet_first: bool, rng: np.random.Generator) -> list[SeriesPlan]:
    """The study's series, before the missing-series quirk is applied."""
    quirks = cfg["quirks"]
    t2_contrast = "STIR" if rng.random() < cfg["stir_rate"] else "T2"
    plans = [
        plan_sagittal(anatomy, SAGITTAL_T1, "T1", series_ids[0], cfg["sagittal"], quirks,
                      feet_first, rng),
        plan_sagittal(anatomy, SAGITTAL_T2, t2_contrast, series_ids[1], cfg["sagittal"], quirks,
                      feet_first, rng),
    ]
    mode = "blocks" if rng.random() < cfg["axial"]["per_level_rate"] else "stack"
    plans.append(plan_axial(anatomy, series_ids[2], mode, cfg["axial"], quirks, feet_first, rng))
    if rng.random() < quirks["two_axial_series"]:
        other = "stack" if mode == "blocks" else "blocks"
        plans.append(plan_axial(anatomy, series_ids[3], other, cfg["axial"], quirks,
                                feet_first, rng))
    return plans
