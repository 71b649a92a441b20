"""The trained localizers read back and run on one stack: checkpoints (or their ONNX exports)
to fold models, heatmaps to points, slice choices and their refinements. How a whole study is
localized with them is :mod:`spinepipe.localize.study`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinepipe import checkpoints
from spinepipe.constants import (
    LEVELS,
    RUNTIMES,
)
from spinepipe.geometry import StackGeometry
from spinepipe.localize.decode import (
    DECODE_DEFAULTS,
    MapFrames,
    decode_levels,
    spine_axis,
)
from spinepipe.localize.models import PointModel, SliceModel, build_localizer, local_soft_argmax
from spinepipe.localize.samples import (
    POINTS_PER_TASK,
    SLICE_TARGETS,
    crop,
    downsample_stack,
)
from spinepipe.localize.settings import TASKS

log = logging.getLogger(__name__)

@dataclass
class FoldModels:
    point: list[PointModel]
    slice: list[SliceModel]


def load_models(paths: dict[str, list[Path]], runtime: str = "torch") -> dict[str, FoldModels]:
    """``paths``: '{kind}_{task}' -> checkpoint files (one per fold), read weights-only;
    ``runtime`` onnx: each checkpoint's ONNX export beside it, run by onnxruntime."""
    models = {task: FoldModels([], []) for task in TASKS}
    for key, files in paths.items():
        kind, task = key.split("_", 1)
        getattr(models[task], kind).extend(load_localizer(path, runtime) for path in files)
    return models


def load_localizer(path: Path, runtime: str = "torch", saved: dict[str, Any] | None = None):
    """The point or slice model of checkpoint ``path`` (``saved``: its content when already
    read), or with ``runtime`` onnx its ONNX export beside it."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    saved = saved if saved is not None else checkpoints.load(path)
    meta = saved["meta"]
    point = meta["kind"] == "point"
    if runtime == "onnx":
        from spinepipe.onnx_models import OnnxPointModel, OnnxSliceModel, onnx_path

        return (OnnxPointModel if point else OnnxSliceModel)(onnx_path(path))
    model = build_localizer(meta["kind"], meta["backbone"],
                            (POINTS_PER_TASK if point else SLICE_TARGETS)[meta["task"]])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


@torch.no_grad()
def point_heatmaps(models: list[PointModel], images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability maps of the images (N, H, W): fold-averaged (N, K, h, w) and per model
    (F, N, K, h, w)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    probs = torch.stack([lg.flatten(2).softmax(-1).view_as(lg)
                         for lg in (m(tensor)["logits"] for m in models)])
    return probs.mean(0), probs


@torch.no_grad()
def predict_points(models: list[PointModel], images: np.ndarray,
                   decode: dict[str, Any] | None = None) -> tuple[np.ndarray, ...]:
    """(N, K, 2) position in image pixels decoded from the fold-averaged heatmap around its
    peak (each heatmap on its own), the peak probability, and the spread of the single
    models' positions."""
    cfg = DECODE_DEFAULTS | (decode or {})
    mean_prob, probs = point_heatmaps(models, images)
    size = np.array([images.shape[2], images.shape[1]])
    xy = local_soft_argmax(mean_prob, cfg["radius"], cfg["search"]).numpy() * size
    peak = mean_prob.flatten(2).max(-1).values.numpy()
    if len(models) < 2:
        return xy, peak, np.zeros(peak.shape)
    singles = np.stack([local_soft_argmax(p, cfg["radius"], cfg["search"]).numpy() * size
                        for p in probs])  # (F, N, K, 2)
    return xy, peak, np.linalg.norm(singles.std(axis=0), axis=-1)


@torch.no_grad()
def predict_levels(models: list[PointModel], images: np.ndarray, pick: Sequence[int],
                   frames: MapFrames, decode: dict[str, Any] | None = None,
                   heatmaps: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, ...]:
    """The five levels of one sagittal series, level k read on ``images[pick[k]]``, decoded
    together (``decode_levels``: ordered superior to inferior, plausibly spaced, unless
    ``decode['joint']`` is false): (K, 2) positions in image pixels, peak probabilities (K,)
    and the spread of the single models' positions (K,), each model decoded the same way.
    ``heatmaps``: :func:`point_heatmaps` of ``images`` when already computed."""
    mean_prob, probs = heatmaps if heatmaps is not None else point_heatmaps(models, images)
    pick_t = torch.as_tensor(np.asarray(pick, dtype=np.int64))
    levels = torch.arange(mean_prob.shape[1])
    size = np.array([images.shape[2], images.shape[1]])
    maps = mean_prob[pick_t, levels]  # (K, h, w)
    xy = decode_levels(maps, frames, **(decode or {})) * size
    peak = maps.flatten(1).max(-1).values.numpy()
    if len(models) < 2:
        return xy, peak, np.zeros(peak.shape)
    singles = np.stack([decode_levels(p[pick_t, levels], frames, **(decode or {})) * size
                        for p in probs])  # (F, K, 2)
    return xy, peak, np.linalg.norm(singles.std(axis=0), axis=-1)


@torch.no_grad()
def predict_slices(models: list[SliceModel], images: np.ndarray, size: int,
                   slice_ok: np.ndarray | None = None) -> np.ndarray | None:
    """Slice index per target from the fold-averaged probabilities over slices; slices that
    could not be decoded (``slice_ok`` False) are never chosen."""
    if not models:
        return None
    stack = torch.from_numpy(downsample_stack(images, size))[None]
    probs = np.mean([m(stack)[0].softmax(0).numpy() for m in models], axis=0)  # (S, T)
    if slice_ok is not None and slice_ok.any():
        probs = np.where(slice_ok[:, None], probs, -1.0)
    return probs.argmax(0)


def nearest_decoded(index: int, slice_ok: np.ndarray | None) -> int:
    """``index`` itself when its slice was decoded, else the nearest decoded slice (a lost
    slice is all zeros: a point found on it would mean nothing)."""
    if slice_ok is None or slice_ok[index] or not slice_ok.any():
        return int(index)
    decoded = np.flatnonzero(slice_ok)
    return int(decoded[np.argmin(np.abs(decoded - index))])


@torch.no_grad()
def refine_foramen_slices(models: list[PointModel], images: np.ndarray, index: np.ndarray, window: int,
                          slice_ok: np.ndarray | None = None, power: float = 2.0,
                          mean_prob: torch.Tensor | None = None) -> np.ndarray:
    """Each (level, side) slice of a Sagittal T1 stack moved to the centre of its foramen.

    The foramen point model's heatmap is sharp on the slices that cut the foramen and
    diffuse elsewhere, so its peak probability along the slices around the first choice
    (``index``, (levels, sides), within ``window`` slices) profiles the foramen; the choice
    becomes that profile's centre of mass (weights peak ** ``power``), read on the stack
    itself rather than at a fixed distance from the canal. Lost slices weigh nothing.
    Measured out of fold on the default dataset: within one slice of the true foramen
    slice for 99.4% of levels (window 3, power 2) against 90.2% for the fixed 21 mm offset.
    ``mean_prob``: the fold-averaged heatmaps of every slice when already computed.
    """
    if mean_prob is None:
        mean_prob, _ = point_heatmaps(models, np.asarray(images, dtype=np.float32))
    peak = mean_prob.flatten(2).max(-1).values.numpy()  # (slices, levels)
    if slice_ok is not None and slice_ok.any():
        peak = np.where(slice_ok[:, None], peak, 0.0)
    refined = index.copy()
    for k in range(index.shape[0]):
        for s in range(index.shape[1]):
            lo, hi = max(int(index[k, s]) - window, 0), min(int(index[k, s]) + window + 1, len(peak))
            weights = peak[lo:hi, k] ** power
            if weights.sum() > 0:
                centre = int(round(float((np.arange(lo, hi) * weights).sum() / weights.sum())))
                refined[k, s] = nearest_decoded(centre, slice_ok)
    return refined


@torch.no_grad()
def refine_axial_slice(models: list[PointModel], images: np.ndarray, geometry: StackGeometry, index: int,
                       centre_xy: tuple[float, float], size: int, window: int,
                       slice_ok: np.ndarray | None = None, power: float = 2.0) -> int:
    """The axial slice of a level moved to the centre of the recess model's response.

    Candidates are the slices within ``window`` of the cross-referenced one (``index``) in
    its own block (parallel slice planes: a per-level tilted block never hands a level to
    its neighbour's block) that were decoded; each is cropped around the same point and
    weighted by its heatmaps' mean peak probability ** ``power``, and the slice nearest the
    weighted mean is chosen. Measured out of fold on the default dataset: within one slice
    of the true slice 97.6% of levels vs 95.9% for the cross-reference alone (window 2).
    """
    normal = geometry.normals[index]
    candidates = [i for i in range(max(index - window, 0), min(index + window + 1, len(images)))
                  if abs(float(geometry.normals[i] @ normal)) > 0.999
                  and (slice_ok is None or not slice_ok.any() or slice_ok[i])]
    if len(candidates) < 2:
        return index
    crops = np.stack([crop(images[i].astype(np.float32), centre_xy, size)[0] for i in candidates])
    mean_prob, _ = point_heatmaps(models, crops)
    weights = mean_prob.flatten(2).max(-1).values.mean(1).numpy() ** power
    if weights.sum() <= 0:
        return index
    centre = float((np.array(candidates) * weights).sum() / weights.sum())
    return int(min(candidates, key=lambda i: abs(i - centre)))


def midline_slices(sagittal: StackGeometry, recess_points: dict[int, np.ndarray],
                   slice_ok: np.ndarray | None = None, n_levels: int = len(LEVELS)) -> dict[int, int]:
    """The Sagittal T2 slice through the canal's mid-line at each level, from the axial stack.

    ``recess_points`` maps a level index to its (2, 3) left and right recess points (patient
    mm, from the axial recess model). The recesses lie either side of the canal, so their
    midpoint is the canal's centre in the patient's left-right direction, the one direction a
    sagittal stack's slice choice needs. A level without both recess points takes a straight
    line fitted over the levels that have them (the mid-line drifts along a tilted or scoliotic
    spine; one level alone gives a constant); with none, no level is returned. Measured on the
    default dataset against the middle of the stack: within one slice of the true canal slice
    99.1% / 100% of levels (out of fold / test) vs 94.2% / 95.0%.
    """
    if not recess_points:
        return {}
    # signed distance of each level's mid-line from every slice plane (slices parallel or not)
    known = {k: sagittal.distances(np.asarray(pts, dtype=np.float64).mean(axis=0))
             for k, pts in recess_points.items()}
    levels = np.array(sorted(known), dtype=np.float64)
    values = np.stack([known[int(k)] for k in levels])
    if len(levels) >= 2:
        design = np.stack([levels, np.ones_like(levels)], axis=1)
        coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    else:
        coef = np.stack([np.zeros_like(values[0]), values[0]])
    chosen = {}
    for k in range(n_levels):
        distances = known[k] if k in known else np.array([k, 1.0]) @ coef
        chosen[k] = nearest_decoded(int(np.argmin(np.abs(distances))), slice_ok)
    return chosen


def canal_level_shift(canal: np.ndarray, left: np.ndarray, right: np.ndarray) -> int:
    """By how many levels the canal's five points sit off the foramina's (0: they agree).

    ``canal``, ``left``, ``right``: (levels, 3) patient points in level order (L1/L2 first).
    The classic gross localization error is a whole series counted one level off; the two
    foramen sides are decoded independently of the canal, so when both sides agree with each
    other (within half a level everywhere) and at least three canal levels sit more than half
    a level from the foramina's, the canal is the odd one out: the returned shift ``s`` says
    that the canal point labelled ``k`` lies at the foramina's level ``k + s``. Positions are
    compared along the spine (the foramina's L1/L2 -> L5/S1 direction), in units of their
    median level spacing.
    """
    frame = spine_axis((left + right) / 2.0)
    if frame is None:
        return 0
    axis, along, spacing = frame
    if spacing <= 0 or np.any(np.abs((left - right) @ axis) > 0.5 * spacing):
        return 0
    offsets = (canal @ axis - along) / spacing
    if int((np.abs(offsets) > 0.5).sum()) < 3:
        return 0
    return int(np.round(np.median(offsets)))
