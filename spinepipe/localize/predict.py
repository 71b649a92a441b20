"""Stage function of the localization rule: the fold localizers over the studies of a split
(out of fold for train, every fold for test and new studies). Nothing here trains."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
import torch

from spinepipe.checkpoints import load as load_checkpoint
from spinepipe.localize.inference import FoldModels, load_localizer
from spinepipe.localize.settings import TASKS
from spinepipe.localize.stacks import StackCache
from spinepipe.localize.study import StudyLocalizer, localize_split
from spinepipe.xref import slice_reader, stack_geometries

log = logging.getLogger(__name__)


def load_localizers(checkpoints: list[Path], runtime: str = "torch",
                    per_fold: bool = False) -> dict[Any, dict[str, FoldModels]]:
    """The localizer models, each checkpoint read and each model built once: ``"all"`` ->
    every fold's models (a test study is localized by their ensemble) and, with ``per_fold``,
    each fold's own (a train study is localized by the models of the fold that held it out),
    the fold grouping read from each checkpoint's own meta."""
    by_fold: dict[int, dict[str, FoldModels]] = {}
    for path in checkpoints:
        saved = load_checkpoint(path)
        meta = saved["meta"]
        tasks = by_fold.setdefault(meta["fold"], {task: FoldModels([], []) for task in TASKS})
        getattr(tasks[meta["task"]], meta["kind"]).append(load_localizer(path, runtime, saved))
    every = {task: FoldModels([m for fold in by_fold.values() for m in fold[task].point],
                              [m for fold in by_fold.values() for m in fold[task].slice]) for task in TASKS}
    return {"all": every, **(by_fold if per_fold else {})}


def localize(split: str, *, checkpoints: list[Path], stack_index: pl.DataFrame,
             instances: pl.DataFrame, series: pl.DataFrame, folds: pl.DataFrame | None,
             cfg: dict[str, Any], threads: int, runtime: str = "torch",
             models: dict[Any, dict[str, FoldModels]] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Predictions for every study of a split: out-of-fold for train, all folds for test
    (``runtime``: the checkpoints in torch, or their ONNX exports in onnxruntime; ``models``:
    already read by :func:`load_localizers`)."""
    torch.set_num_threads(max(threads, 1))
    cache = StackCache(stack_index)
    geometries = stack_geometries(instances, series)
    reader = slice_reader(instances)
    out_of_fold = split == "train" and folds is not None
    if models is None:
        models = load_localizers(checkpoints, runtime, per_fold=out_of_fold)
    localizers = {key: StudyLocalizer(fold_models, cache, geometries, reader, cfg)
                  for key, fold_models in models.items()}
    fold_of = dict(folds.select("study_id", "fold").iter_rows()) if out_of_fold else {}
    studies = sorted(series["study_id"].unique().to_list())
    return localize_split(studies, series,
                          lambda sid: localizers[fold_of[sid]] if sid in fold_of else localizers["all"])
