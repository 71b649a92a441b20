"""Decoding the level heatmaps of one sagittal series jointly.

Each level's heatmap decoded on its own (``local_soft_argmax``) can put its peak on the
neighbouring disc: adjacent discs look alike. The five levels of a series are not
independent, though: L1/L2 .. L5/S1 lie in this order from superior to inferior, one
vertebra apart. ``decode_levels`` keeps the independent decoding when it satisfies that,
and otherwise chooses one candidate peak per level by dynamic programming (Viterbi over the
levels) under the constraint that each level is superior to the next (patient +z, LPS,
whatever the image orientation) and spaced ``spacing_ratio`` times the series' level spacing:
fewest violated pairs first, then fewest levels moved from their independent peak (a repair
touches only the levels it must), then the largest sum of log probability masses. Each chosen
peak is refined by the same local expectation as the independent decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray

from spinepipe.geometry import StackGeometry
from spinepipe.localize.models import local_soft_argmax, search_peak, window_expectation

log = logging.getLogger(__name__)

SUPERIOR = np.array([0.0, 0.0, 1.0])  # LPS: +z is the patient's head
# A candidate peak holds at least this share of its map's probability in its window: a
# level is never moved onto a spot its heatmap gives no support, however plausible the spot.
MIN_MASS = 0.01
# Costs that make the path choice lexicographic over the five levels: one level moved costs
# more than any sum of log-mass differences (5 |log MIN_MASS| = 23), one violated pair more
# than moving every level; so the fewest violations win, then the fewest moves, then the mass.
MOVE = 25.0
VIOLATION = 1000.0
DECODE_DEFAULTS: dict[str, Any] = {"radius": 3, "search": 0.1, "joint": True, "candidates": 4,
                                   "spacing_ratio": (0.6, 1.5), "spacing_mm": (20.0, 60.0)}


@dataclass(frozen=True)
class MapFrames:
    """Where each level's heatmap lies in patient space (LPS, mm): map point (u, v) in
    [0, 1] of level k is at ``origin[k] + u * x_axis[k] + v * y_axis[k]``."""

    origin: NDArray[np.float64]  # (K, 3)
    x_axis: NDArray[np.float64]  # (K, 3) one map width along the image rows
    y_axis: NDArray[np.float64]  # (K, 3) one map height along the image columns

    @classmethod
    def from_stack(cls, geometry: StackGeometry, indices: Sequence[int], image_shape: Sequence[int],
                   scale: ArrayLike) -> MapFrames:
        """Frames of maps predicted on the resized slices ``indices`` (one per level) of a
        stack of images ``image_shape`` (H, W); ``scale``: DICOM pixels per image pixel (x, y)."""
        idx = np.asarray(indices, dtype=np.int64)
        columns = image_shape[-1] * float(scale[0])
        rows = image_shape[-2] * float(scale[1])
        spacing = geometry.pixel_spacing[idx]  # [row spacing, column spacing]
        return cls(geometry.ipp[idx], geometry.row_dir[idx] * (columns * spacing[:, 1:2]),
                   geometry.col_dir[idx] * (rows * spacing[:, 0:1]))

    def to_patient(self, uv: NDArray) -> NDArray[np.float64]:
        """Map points (K, ..., 2) -> patient points (K, ..., 3)."""
        uv = np.asarray(uv, dtype=np.float64)
        extra = (slice(None),) + (None,) * (uv.ndim - 2)
        return (self.origin[extra] + uv[..., 0:1] * self.x_axis[extra]
                + uv[..., 1:2] * self.y_axis[extra])


def check_decode(decode: dict[str, Any]) -> None:
    """Raise ValueError for a ``localize.decode`` range whose minimum is above its maximum."""
    cfg = DECODE_DEFAULTS | decode
    for key in ("spacing_ratio", "spacing_mm"):
        low, high = cfg[key]
        if low > high:
            raise ValueError(f"localize.decode.{key}: range [{low}, {high}] has its minimum "
                             "above its maximum")


def decode_levels(prob: torch.Tensor, frames: MapFrames | None = None, **decode: Any) -> NDArray:
    """(x, y) in [0, 1] of each level's probability map ``prob`` (K, H, W), levels ordered
    superior to inferior; ``decode``: the ``localize.decode`` config (``DECODE_DEFAULTS``).

    Independent decoding when ``joint`` is false or no ``frames`` are given; otherwise joint.
    """
    cfg = DECODE_DEFAULTS | decode
    xy = local_soft_argmax(prob[None], cfg["radius"], cfg["search"])[0].numpy()
    if not cfg["joint"] or frames is None or len(prob) < 2:
        return xy
    points = frames.to_patient(xy)
    low, high = _step_bounds(points, cfg["spacing_mm"], cfg["spacing_ratio"])
    if _plausible(points[:-1], points[1:], low, high).all():
        return xy  # the independent decoding is kept as it is whenever it is plausible
    first = search_peak(prob[None], cfg["search"])[0].numpy()
    cells, log_mass = _candidates(prob, first, cfg["radius"], cfg["candidates"])
    # every candidate refined as the independent decoding refines its peak: (C, K, 2) -> (K, C, 2)
    uv = window_expectation(prob[None].expand(cells.shape[1], -1, -1, -1),
                            torch.from_numpy(cells.T.copy()), cfg["radius"]).numpy().swapaxes(0, 1)
    moves = MOVE * (np.arange(cells.shape[1]) > 0)  # candidate 0 is the independent peak
    choice = _viterbi(log_mass - moves, frames.to_patient(uv), low, high)
    moved = np.flatnonzero(choice != 0)
    log.debug("joint decoding moved levels %s (steps %.1f-%.1f mm)", moved.tolist(), low, high)
    return uv[np.arange(len(choice)), choice]


def _step_bounds(points: NDArray, prior_mm: Sequence[float],
                 ratio: Sequence[float]) -> tuple[float, float]:
    """Allowed distance (mm) between consecutive levels: ``ratio`` times the series' level
    spacing, the median over all pairs of levels of distance / index difference (one level on
    its neighbour's disc barely moves it), clipped to the plausible ``prior_mm``."""
    i, j = np.triu_indices(len(points), 1)
    per_level = np.linalg.norm(points[j] - points[i], axis=-1) / (j - i)
    spacing = float(np.clip(np.median(per_level), *prior_mm))
    return ratio[0] * spacing, ratio[1] * spacing


def _plausible(upper: NDArray, lower: NDArray, low: float, high: float) -> NDArray[np.bool_]:
    """Whether each ``upper`` point can be the level just above ``lower`` (broadcasting)."""
    step = upper - lower
    distance = np.linalg.norm(step, axis=-1)
    return (step @ SUPERIOR > 0) & (distance >= low) & (distance <= high)


def _candidates(prob: torch.Tensor, first: NDArray, radius: int,
                n: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Up to ``n`` peaks per map (K, H, W): flat cells (K, n) and log probability mass in
    their window (-inf where a map has fewer). Candidate 0 is the independent decoding's
    peak ``first`` (K,); the others are local maxima of the map smoothed over 3 x 3 cells
    whose window holds at least ``MIN_MASS``, strongest window first, more than ``radius``
    cells (Chebyshev) from every stronger candidate."""
    k, h, w = prob.shape
    size = 2 * radius + 1
    mass = F.avg_pool2d(prob[:, None], size, stride=1, padding=radius,
                        count_include_pad=True)[:, 0] * size**2
    # maxima of the lightly smoothed map, not of the window mass: a window as wide as the
    # distance between discs would merge a weak disc into its strong neighbour
    smooth = F.avg_pool2d(prob[:, None], 3, stride=1, padding=1, count_include_pad=True)
    peaks = (smooth == F.max_pool2d(smooth, 3, stride=1, padding=1))[:, 0] & (mass >= MIN_MASS)
    mass, peaks = mass.flatten(1).numpy(), peaks.flatten(1).numpy()
    cells = np.repeat(first[:, None], n, axis=1).astype(np.int64)
    log_mass = np.full((k, n), -np.inf)
    for level in range(k):
        chosen = [int(first[level])]
        local = np.flatnonzero(peaks[level])
        for cell in local[np.argsort(-mass[level, local], kind="stable")]:
            if len(chosen) == n:
                break
            far = [max(abs(cell // w - c // w), abs(cell % w - c % w)) > radius for c in chosen]
            if all(far):
                chosen.append(int(cell))
        cells[level, :len(chosen)] = chosen
        log_mass[level, :len(chosen)] = np.log(np.maximum(mass[level, chosen], 1e-12))
    return cells, log_mass


def _viterbi(score: NDArray, points: NDArray, low: float, high: float) -> NDArray[np.int64]:
    """Candidate index per level (K,) maximising the summed ``score`` (K, C) minus
    ``VIOLATION`` for each consecutive pair that is out of order or implausibly spaced; ties
    keep the lower candidate index."""
    best = score[0]
    back = []
    for level in range(1, len(score)):
        step = np.where(_plausible(points[level - 1][:, None], points[level][None, :], low, high),
                        0.0, -VIOLATION)
        total = best[:, None] + step  # (previous candidate, candidate)
        back.append(total.argmax(0))
        best = total.max(0) + score[level]
    choice = [int(best.argmax())]
    for pointers in reversed(back):
        choice.append(int(pointers[choice[-1]]))
    return np.array(choice[::-1], dtype=np.int64)


def spine_axis(points: NDArray) -> tuple[NDArray, NDArray, float] | None:
    """The spine's direction through five level points (K, 3) in level order (unit vector
    from the first to the last), each point's position along it and the median step between
    consecutive levels; None when the direction is undefined."""
    axis = points[-1] - points[0]
    if not np.all(np.isfinite(axis)) or np.linalg.norm(axis) == 0:
        return None
    axis = axis / np.linalg.norm(axis)
    along = points @ axis
    return axis, along, float(np.median(np.diff(along)))


def realign_to_reference(prob: torch.Tensor, frames: MapFrames, uv: NDArray, reference: NDArray,
                         ratio: Sequence[float] = DECODE_DEFAULTS["spacing_ratio"],
                         radius: int = DECODE_DEFAULTS["radius"]) -> tuple[NDArray, list[int]]:
    """One sagittal source's five levels (``uv`` (K, 2) in [0, 1] of the maps ``prob``
    (K, H, W)) put back in step with a ``reference`` source's points (K, 3, patient mm).

    Discs are evenly spaced along the spine, and every source (canal, left and right foramen)
    decodes the same five discs. A source whose steps along the spine (the reference's
    L1/L2 -> L5/S1 direction, in units of the reference's median step) fall outside
    ``ratio`` has put some levels on a neighbouring disc: two levels collapsed on one disc, or
    a disc skipped. Where the reference's own steps are plausible, each of the source's levels
    more than half a step from the reference's is decoded again on its heatmap restricted to
    the band within half a step of the reference's position. A whole source off (every level)
    is a counting question this cannot settle and is left alone; so is a repair that does
    not make the source's steps plausible, or a band its heatmap gives no support
    (``MIN_MASS``). Returns the new ``uv`` and the levels moved."""
    uv = np.array(uv, dtype=np.float64)
    frame = spine_axis(reference)
    if frame is None:
        return uv, []
    axis, ref_along, spacing = frame

    def plausible(along: NDArray) -> bool:
        steps = np.diff(along) / spacing
        return bool(np.all((steps >= ratio[0]) & (steps <= ratio[1])))

    if spacing <= 0 or not plausible(ref_along):
        return uv, []
    along = frames.to_patient(uv) @ axis
    off = np.abs(along - ref_along) > 0.5 * spacing
    if plausible(along) or not off.any() or off.all():
        return uv, []
    k, h, w = prob.shape
    grid = np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), axis=-1)
    cells_along = frames.to_patient(np.broadcast_to(grid, (k, h, w, 2))) @ axis  # (K, H, W)
    moved = uv.copy()
    for level in np.flatnonzero(off):
        band = torch.from_numpy(np.abs(cells_along[level] - ref_along[level]) <= 0.5 * spacing)
        masked = prob[level] * band.to(prob.dtype)
        if float(masked.sum()) < MIN_MASS:
            return uv, []
        moved[level] = local_soft_argmax((masked / masked.sum())[None, None], radius, None)[0, 0].numpy()
    if not plausible(frames.to_patient(moved) @ axis):
        return uv, []
    return moved, [int(level) for level in np.flatnonzero(off)]
