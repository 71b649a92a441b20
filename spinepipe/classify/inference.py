"""Test inference: every fold model of a family over the cached test crops (optional flip
test-time augmentation), then the ensemble and the submission with its fallbacks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.special import softmax
from torch.utils.data import DataLoader

from spinepipe.classify.data import CropDataset, family_samples
from spinepipe.classify.fold_model import LOGITS, load_model, predictions_frame
from spinepipe.constants import CONDITION_FAMILY, FAMILIES, SUBMISSION_COLUMNS, split_row_id
from spinepipe.crops.views import FAMILY_INPUTS, VIEWS
from spinepipe.metric import priors_for_rows

log = logging.getLogger(__name__)

DEGRADED_SCHEMA = {"row_id": pl.String, "reason": pl.String, "fallback": pl.String}


def flip_spinal(images: torch.Tensor, n_views: int) -> torch.Tensor:
    """The spinal sample seen from the other side: each view's slice order reversed (the
    sagittal neighbours swap sides) and axial views flipped left-right. Only the spinal canal
    is symmetric; sided families have no label-preserving flip."""
    b, t, h, w = images.shape
    views = images.view(b, n_views, t // n_views, h, w).flip(2)
    names = FAMILY_INPUTS["spinal"]["center"]
    axial = torch.tensor([VIEWS[n].series_description.startswith("Axial") for n in names],
                         device=images.device)
    views = torch.where(axial[None, :, None, None, None], views.flip(-1), views)
    return views.reshape(b, t, h, w)


@torch.no_grad()
def predict_family(model_path: Path, index: pl.DataFrame, tta: bool, batch_size: int,
                   device: torch.device | str = "cpu", runtime: str = "torch",
                   loaded: tuple[Any, dict[str, Any]] | None = None) -> pl.DataFrame:
    """Logits of one fold model for every sample of its family in ``index`` (``runtime``:
    the checkpoint in torch, or its ONNX export in onnxruntime; ``loaded``: the model and
    meta ``load_model`` already read from ``model_path``)."""
    model, meta = loaded if loaded is not None else load_model(model_path, device, runtime)
    family, crops = meta["family"], meta["crops"]
    samples = family_samples(family, index)
    log.info("%s (%s fold %s): %d samples, runtime %s", model_path, family, meta["fold"], len(samples), runtime)
    loader = DataLoader(CropDataset(samples, crops, train=False), batch_size=batch_size, shuffle=False)
    n_views = len(next(iter(FAMILY_INPUTS[family].values())))
    logits = []
    for batch in loader:
        images, mask = batch["image"].to(device), batch["mask"].to(device)
        out = model(images, mask)["logits"]
        if tta and family == "spinal":
            flipped_mask = mask.view(mask.shape[0], n_views, -1).flip(2).reshape(mask.shape)
            out = (out + model(flip_spinal(images, n_views), flipped_mask)["logits"]) / 2
        logits.append(out.float().cpu().numpy())
    stacked = np.concatenate(logits) if logits else np.zeros((0, 1, 3))
    return predictions_frame(samples, stacked, family, meta["fold"])


def ensemble(predictions: pl.DataFrame, temperatures: dict[str, float],
             fold_weights: list[float] | None) -> pl.DataFrame:
    """Per row: the weighted mean over fold models of the temperature-scaled probabilities."""
    logits = predictions.select(LOGITS).to_numpy()
    t = np.array([temperatures.get(f, 1.0) for f in predictions["family"].to_list()])[:, None]
    probs = softmax(logits / t, axis=-1)
    weights = (np.ones(predictions.height) if fold_weights is None
               else np.array([fold_weights[f] for f in predictions["fold"].to_list()], dtype=np.float64))
    frame = predictions.select("row_id", "family", "views_ok", "views").with_columns(
        pl.Series("_w", weights), *[pl.Series(c, probs[:, k] * weights) for k, c in enumerate(SUBMISSION_COLUMNS)])
    return frame.group_by("row_id", "family").agg(
        pl.col("views_ok").min(), pl.col("views").max(),
        *[(pl.col(c).sum() / pl.col("_w").sum()).alias(c) for c in SUBMISSION_COLUMNS])


def assemble_submission(sample_submission: pl.DataFrame, ensembled: pl.DataFrame,
                        priors: pl.DataFrame, crop_index: pl.DataFrame,
                        unlocalized: pl.DataFrame | None = None,
                        series: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The submission in the sample's row order, and the degraded-rows report.

    A row keeps its model prediction when at least one of its views was cut (a spinal row with
    one series missing is predicted from the other); with no view, no prediction, or a
    non-finite one, it falls back to the prior (``priors``: the training label frequencies,
    ``spinepipe.metric.prior_table``). Every row not
    predicted from all its views is listed with its reason, and so is every row whose series
    had unreadable files (``series``: series.parquet), predicted from the remaining slices.
    """
    row_ids = sample_submission["row_id"].to_list()
    prior = priors_for_rows(priors, row_ids)
    merged = sample_submission.select("row_id").join(
        ensembled.select("row_id", "views_ok", "views", *SUBMISSION_COLUMNS), on="row_id", how="left",
        maintain_order="left")
    model_probs = merged.select(SUBMISSION_COLUMNS).to_numpy()
    prior_probs = prior.select(SUBMISSION_COLUMNS).to_numpy()
    views_ok = merged["views_ok"].fill_null(0).to_numpy()
    views = merged["views"].fill_null(0).to_numpy()
    finite = np.isfinite(model_probs).all(axis=1)
    use_model = finite & (views_ok > 0)
    probs = np.where(use_model[:, None], model_probs, prior_probs)
    probs = np.clip(probs, 1e-7, None)
    probs = probs / probs.sum(axis=1, keepdims=True)
    submission = pl.DataFrame({"row_id": row_ids, **{c: probs[:, k] for k, c in enumerate(SUBMISSION_COLUMNS)}})

    statuses = _missing_views(crop_index)
    lost = _lost_slices(crop_index)
    reasons_by_study: dict[int, list[tuple[str | None, str]]] = {}
    if unlocalized is not None and unlocalized.height:
        for r in unlocalized.iter_rows(named=True):
            reasons_by_study.setdefault(r["study_id"], []).append(
                (r.get("series_description"), str(r["reason"])))
    problems = _series_problems(series)
    degraded = []
    for i, row_id in enumerate(row_ids):
        study, condition, level = split_row_id(row_id)
        family, side = CONDITION_FAMILY[condition], _side(condition)
        descriptions = FAMILY_DESCRIPTIONS[family]
        missing = statuses.get((int(study), level, family, side), [])
        study_problems = problems.get(int(study), [])
        series_notes = [p for description, p in study_problems if description in descriptions]
        # a series of unknown description could have been any of them: named on degraded rows
        unknown_notes = [p for description, p in study_problems if description not in ALL_DESCRIPTIONS]
        slice_notes = [f"{view}: {why}" for view in FAMILY_INPUTS[family][side]
                       if (why := lost.get((int(study), level, view)))]
        context = [why for description, why in reasons_by_study.get(int(study), [])
                   if description is None or description in descriptions]
        if merged["views"][i] is None:
            reason = "no prediction for this row (study absent from the crops)"
        elif not finite[i]:
            reason = "non-finite model output"
        elif views_ok[i] == 0:
            reason = "no view could be cut: " + ", ".join(missing)
        elif views_ok[i] < views[i]:
            reason = "predicted without " + ", ".join(missing)
        elif series_notes or slice_notes:
            reason = "predicted from the readable slices"
        else:
            continue
        details = series_notes + slice_notes + unknown_notes + context
        if details:
            reason += " (" + "; ".join(dict.fromkeys(details)) + ")"
        fallback = ("prior" if not use_model[i] else "model (other series)"
                    if views_ok[i] < views[i] else "model (readable slices)")
        degraded.append({"row_id": row_id, "reason": reason[:1000], "fallback": fallback})
    return submission, pl.DataFrame(degraded, schema=DEGRADED_SCHEMA)


FAMILY_DESCRIPTIONS = {family: {VIEWS[v].series_description for views in FAMILY_INPUTS[family].values()
                                for v in views} for family in FAMILIES}
ALL_DESCRIPTIONS = set().union(*FAMILY_DESCRIPTIONS.values())


def _series_problems(series: pl.DataFrame | None) -> dict[int, list[tuple[str, str]]]:
    """study -> (series description, what is wrong) for every series that is unusable or was
    used despite a defect (unusable files, slices keyed by file, ...; series.parquet)."""
    out: dict[int, list[tuple[str, str]]] = {}
    if series is None:
        return out
    for r in series.iter_rows(named=True):
        what = r["geometry_error"] if not r["geometry_ok"] else r.get("defects")
        if not what and r["n_bad"]:
            what = f"{r['n_bad']} of {r['n_files']} files unusable"
        if what:
            name = r["series_description"] or "undescribed"
            out.setdefault(r["study_id"], []).append(
                (r["series_description"], f"{name} series {r['series_id']}: {what}"))
    return out


def _lost_slices(crop_index: pl.DataFrame) -> dict[tuple[int, str, str], str]:
    """(study, level, view) -> which slices of its series could not be decoded."""
    if "lost_slices" not in crop_index.columns:
        return {}
    lost = crop_index.filter(pl.col("lost_slices").fill_null(0) > 0)
    return {(r["study_id"], r["level"], r["view"]):
            f"{r['lost_slices']} slice(s) of series {r['series_id']} could not be decoded"
            + (f" ({r['lost_reason']})" if r.get("lost_reason") else "")
            for r in lost.iter_rows(named=True)}


def _side(condition: str) -> str:
    return condition.split("_", 1)[0] if condition.startswith(("left", "right")) else "center"


def _missing_views(crop_index: pl.DataFrame) -> dict[tuple[int, str, str, str], list[str]]:
    """(study, level, family, side) -> the views of its model that could not be cut, with why."""
    status = {(r["study_id"], r["level"], r["view"]): r["status"] for r in crop_index.iter_rows(named=True)}
    out: dict[tuple[int, str, str, str], list[str]] = {}
    for study_id, level in {(s, lv) for s, lv, _ in status}:
        for family in FAMILIES:
            for side, views in FAMILY_INPUTS[family].items():
                out[(study_id, level, family, side)] = [
                    f"{v} ({status.get((study_id, level, v), 'absent')})" for v in views
                    if status.get((study_id, level, v)) != "ok"]
    return out


def validate_submission(submission: pl.DataFrame, sample_submission: pl.DataFrame) -> None:
    """Raise unless rows, order and columns match the sample (or, for a sample of row ids
    alone, the submission format's columns) and every row is a distribution."""
    expected = sample_submission.columns if sample_submission.width > 1 else ["row_id", *SUBMISSION_COLUMNS]
    if submission.columns != expected:
        raise ValueError(f"submission columns {submission.columns} != {expected}")
    if submission["row_id"].to_list() != sample_submission["row_id"].to_list():
        raise ValueError("submission rows differ from sample_submission.csv (ids or order)")
    probs = submission.select(SUBMISSION_COLUMNS).to_numpy()
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("submission holds probabilities outside [0, 1] or non-finite values")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("submission rows do not sum to 1")

