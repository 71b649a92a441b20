"""Training samples over the crop cache: which crops and labels make one sample of a family,
and a torch Dataset that reads them from the memory-mapped arrays (no DICOM decoding)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from spinepipe.constants import LEVELS
from spinepipe.crops.views import FAMILY_INPUTS
from spinepipe.npy_rows import NpyRows

log = logging.getLogger(__name__)

# Conditions a family's model outputs, per side of its samples
FAMILY_CONDITIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "spinal": {"center": ("spinal_canal_stenosis",)},
    "foraminal": {"left": ("left_neural_foraminal_narrowing",),
                  "right": ("right_neural_foraminal_narrowing",)},
    "subarticular": {"left": ("left_subarticular_stenosis",),
                     "right": ("right_subarticular_stenosis",)},
    "all": {"center": ("spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                       "right_neural_foraminal_narrowing", "left_subarticular_stenosis",
                       "right_subarticular_stenosis")},
}


def n_outputs(family: str) -> int:
    return len(next(iter(FAMILY_CONDITIONS[family].values())))


def n_views(family: str) -> int:
    return len(next(iter(FAMILY_INPUTS[family].values())))


@dataclass
class Sample:
    study_id: int
    level: str
    side: str
    row_ids: list[str]                  # submission rows this sample predicts
    crops: list[tuple[str, int]]        # (array path, row) per view
    masks: list[list[bool]]             # cached slice masks per view
    statuses: list[str]
    target: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # -1: no label
    # the same study, level and side cut at its out-of-fold predicted point (training only)
    predicted: Sample | None = None

    @property
    def usable(self) -> bool:
        return any(s == "ok" for s in self.statuses)


def family_samples(family: str, index: pl.DataFrame,
                   targets: dict[str, int] | None = None) -> list[Sample]:
    """One sample per (study, level, side) of the family, from the crop index
    (``study_id, level, view, array, row, status, slice_mask``)."""
    by_key = {(r["study_id"], r["level"], r["view"]): r for r in index.iter_rows(named=True)}
    samples = []
    for study_id in sorted(index["study_id"].unique().to_list()):
        for level in LEVELS:
            for side, views in FAMILY_INPUTS[family].items():
                rows = [by_key.get((study_id, level, v)) for v in views]
                if any(r is None for r in rows):
                    continue
                conditions = FAMILY_CONDITIONS[family][side]
                row_ids = [f"{study_id}_{c}_{level}" for c in conditions]
                target = np.array([-1 if targets is None else targets.get(r, -1) for r in row_ids],
                                  dtype=np.int64)
                samples.append(Sample(study_id, level, side, row_ids,
                                      [(r["array"], r["row"]) for r in rows],
                                      [r["slice_mask"] for r in rows], [r["status"] for r in rows],
                                      target))
    return samples


def attach_predicted(samples: list[Sample], predicted: list[Sample]) -> int:
    """Give each sample its twin cut at the out-of-fold predicted point (same study, level
    and side) when that twin has a usable view; returns how many got one."""
    by_key = {(s.study_id, s.level, s.side): s for s in predicted if s.usable}
    for sample in samples:
        sample.predicted = by_key.get((sample.study_id, sample.level, sample.side))
    return sum(s.predicted is not None for s in samples)


def family_view_dropout(setting: float | Mapping[str, float], family: str) -> float:
    """``family``'s share of ``train.view_dropout``: one share for every family, or one per
    family. The all-series comparison model reads every family's views and takes the largest."""
    if not isinstance(setting, Mapping):
        return float(setting)
    return float(max(setting.values()) if family == "all" else setting[family])


def label_targets(labels_long: pl.DataFrame) -> dict[str, int]:
    """row_id -> 0/1/2 for labelled rows (from ``metric.labels_to_long``)."""
    known = labels_long.filter(pl.col("target").is_not_null())
    return dict(zip(known["row_id"].to_list(), known["target"].cast(pl.Int64).to_list()))


def build_transform(spec: dict[str, Any], where: str = "train.augment") -> A.BasicTransform:
    """One albumentations transform from a config entry ``{name: ..., **kwargs}``; an
    unknown name, an unknown keyword (albumentations only warns about those) or a rejected
    value is a ValueError naming ``where`` and the transform."""
    name = spec.get("name")
    transform = getattr(A, str(name), None)
    if not (isinstance(transform, type) and issubclass(transform, A.BasicTransform)):
        raise ValueError(f"{where}: albumentations has no transform {name!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            built = transform(**kwargs)
        except Exception as error:  # noqa: BLE001 - pydantic, TypeError, ValueError alike
            raise ValueError(f"{where} ({name}): {' '.join(str(error).split())[:500]}") from error
    rejected = [str(w.message) for w in caught if "not valid for transform" in str(w.message)]
    if rejected:
        raise ValueError(f"{where} ({name}): {'; '.join(rejected)}")
    for w in caught:  # anything else albumentations had to say is passed on
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return built


def build_augment(specs: list[dict[str, Any]]) -> A.Compose | None:
    """An albumentations pipeline from config entries ``{name: ..., **kwargs}``; a bad entry
    is a ValueError naming ``train.augment[i]`` and the transform."""
    if not specs:
        return None
    return A.Compose([build_transform(spec, f"train.augment[{i}]") for i, spec in enumerate(specs)])


class CropDataset(Dataset):
    """(views * slices, size, size) float32 tensors, their slice mask, targets and level.

    Training draws a slice offset within ``slice_jitter`` and a crop-centre shift within
    ``point_jitter`` pixels from the cached margins, then applies ``augment`` to all slices
    of the sample alike. With ``predicted_point_share`` p, a draw reads the sample's twin
    cut at its out-of-fold predicted point (``Sample.predicted``, where it has one) with
    probability p: the localization errors of test time, seen in training. With
    ``view_dropout`` q, a draw of a sample with two or more cut views masks one of them out
    (zeros, all-false mask) with probability q: a missing series at test time, seen in
    training, so the model does not meet a lone view for the first time at test. Both are
    one family's numbers (:func:`family_view_dropout` resolves a per-family setting).
    """

    def __init__(self, samples: list[Sample], cfg: dict[str, Any], train: bool,
                 augment: A.Compose | None = None, seed: int = 0) -> None:
        self.samples, self.train, self.augment = samples, train, augment
        self.size, self.margin, self.slices = cfg["size"], cfg["margin"], cfg["slices"]
        self.extra = cfg["extra_slices"]
        self.slice_jitter = min(cfg.get("slice_jitter", 0), self.extra) if train else 0
        self.point_jitter = min(cfg.get("point_jitter", 0), self.margin) if train else 0
        self.predicted_share = float(cfg.get("predicted_point_share", 0.0)) if train else 0.0
        self.view_dropout = float(cfg.get("view_dropout", 0.0)) if train else 0.0
        self.rng = np.random.default_rng(seed)
        self._arrays: dict[str, NpyRows] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _row(self, path: str, row: int) -> np.ndarray:
        """One cached crop, read from its shard file (no memory map: see spinepipe.npy_rows)."""
        if path not in self._arrays:
            self._arrays[path] = NpyRows(path)
        return self._arrays[path].read(row)[0]

    def _drop_a_view(self, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
        """With probability ``view_dropout``, blank one of the views that have slices, when
        at least two do (a sample is never left with nothing to see). Single-view samples
        draw nothing, so their training is the same with or without view dropout."""
        present = [k for k, m in enumerate(masks) if m.any()]
        if not self.view_dropout or len(present) < 2 or self.rng.random() >= self.view_dropout:
            return
        k = present[int(self.rng.integers(len(present)))]
        images[k] = np.zeros_like(images[k])
        masks[k] = np.zeros_like(masks[k])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.samples[i]
        source = sample  # where the pixels come from; the targets stay the sample's
        if self.predicted_share and sample.predicted is not None and self.rng.random() < self.predicted_share:
            source = sample.predicted
        offset = int(self.rng.integers(-self.slice_jitter, self.slice_jitter + 1)) if self.slice_jitter else 0
        dx, dy = (self.rng.integers(-self.point_jitter, self.point_jitter + 1, size=2)
                  if self.point_jitter else (0, 0))
        centre = self.slices + self.extra + offset
        lo, hi = centre - self.slices, centre + self.slices + 1
        y0, x0 = self.margin + dy, self.margin + dx
        images, masks = [], []
        for (path, row), mask in zip(source.crops, source.masks):
            crop = self._row(path, row)[lo:hi, y0:y0 + self.size, x0:x0 + self.size]
            images.append(np.asarray(crop, dtype=np.float32))
            masks.append(np.asarray(mask[lo:hi], dtype=bool))
        self._drop_a_view(images, masks)
        stack = np.concatenate(images)  # (T, H, W)
        if self.augment is not None:
            stack = self.augment(image=np.ascontiguousarray(stack.transpose(1, 2, 0)))["image"]
            stack = np.ascontiguousarray(np.asarray(stack, dtype=np.float32).transpose(2, 0, 1))
        return {"image": torch.from_numpy(stack), "mask": torch.from_numpy(np.concatenate(masks)),
                "target": torch.from_numpy(sample.target),
                "level": torch.tensor(LEVELS.index(sample.level))}
