"""Stage function of the training rule: one condition family, one fold, one MLflow child run."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import yaml

from spinepipe import checkpoints
from spinepipe.backbones import FROM_SCRATCH, weights_provenance
from spinepipe.classify.data import (
    CropDataset,
    attach_predicted,
    build_augment,
    family_samples,
    family_view_dropout,
    label_targets,
)
from spinepipe.classify.fold_model import build_model, predictions_frame
from spinepipe.classify.jitter import resolve_jitter
from spinepipe.classify.plots import confusion, plot_confusions, plot_history
from spinepipe.classify.training import fit, make_loader, predict, weighted_log_loss_from_logits
from spinepipe.code_inputs import code_digest
from spinepipe.constants import split_row_id
from spinepipe.devices import autocast_dtype, precision_name, resolve_device
from spinepipe.metric import labels_to_long
from spinepipe.seeding import seed_everything
from spinepipe.tracking.runs import log_artifact, mlflow_run

log = logging.getLogger(__name__)

def family_metric(class_weights: np.ndarray):
    """Validation figure for checkpoint selection (``train.select_by: metric``): the
    competition's weighted log loss of each output, averaged. The any-severe term needs the
    five spinal levels of a study together and is left to the out-of-fold evaluation."""
    def metric(logits: np.ndarray, targets: np.ndarray) -> float:
        per_output = [weighted_log_loss_from_logits(logits[:, k], targets[:, k], class_weights)
                      for k in range(logits.shape[1])]
        return float(np.nanmean(per_output))
    return metric


def _data_digest(index: pl.DataFrame, predicted_index: pl.DataFrame | None,
                 labels: pl.DataFrame) -> str:
    """Digest of the training data: the rows of the crop indexes and labels, and the size and
    mtime of every crop array they point to."""
    digest = hashlib.sha256()
    for frame in (index, predicted_index, labels):
        if frame is not None:
            digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
            if "array" in frame.columns:
                for array in sorted(frame["array"].drop_nulls().unique().to_list()):
                    if Path(array).is_file():
                        stat = Path(array).stat()
                        digest.update(f"{array} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _fingerprint(*parts: Any) -> str:
    """sha256 of ``parts`` as sorted-key JSON (anything else as its string)."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()


def _fold_samples(family: str, fold: int, index: pl.DataFrame, labels: pl.DataFrame, folds: pl.DataFrame,
                  skip_missing: bool) -> tuple[list, list, dict[str, int]]:
    """``family``'s training samples (every fold but ``fold``; none without a label, nor, with
    ``skip_missing``, without a usable view), its validation samples (``fold``) and how many
    training samples were skipped for each reason."""
    samples = family_samples(family, index, label_targets(labels_to_long(labels)))
    held_out = set(folds.filter(pl.col("fold") == fold)["study_id"].to_list())
    train = [s for s in samples if s.study_id not in held_out]
    skipped = {"no_label": sum((s.target < 0).all() for s in train),
               "no_view": sum(not s.usable for s in train) if skip_missing else 0}
    train = [s for s in train if (s.target >= 0).any() and (s.usable or not skip_missing)]
    return train, [s for s in samples if s.study_id in held_out], skipped


def dataset_settings(family: str, crop_cfg: dict[str, Any], jitter: dict[str, int],
                     cfg: dict[str, Any]) -> dict[str, Any]:
    """What ``family``'s CropDatasets read: the crop settings, the resolved jitter, the
    predicted-point share and the family's view dropout (``train.view_dropout`` may give one
    share per family)."""
    return crop_cfg | jitter | {"predicted_point_share": float(cfg["predicted_point_share"]),
                                "view_dropout": family_view_dropout(cfg["view_dropout"], family)}


def _log_fold_artifacts(settings: dict[str, Any], history: list[dict], val: list, logits: np.ndarray,
                        val_targets: np.ndarray) -> None:
    """The fold run's artifacts: its settings, loss curves and one confusion matrix per
    condition (a shared sided model split by side)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.yaml").write_text(yaml.safe_dump(settings))
        plot_history(history, folder / "loss_curves.png")
        predicted = logits.argmax(-1)
        matrices: dict[str, np.ndarray] = {}
        for i, sample in enumerate(val):
            for k, row_id in enumerate(sample.row_ids):
                _, condition, _ = split_row_id(row_id)
                matrices.setdefault(condition, np.zeros((3, 3), dtype=np.int64))
                matrices[condition] += confusion(val_targets[i:i + 1, k], predicted[i:i + 1, k])
        if matrices:
            plot_confusions(matrices, folder / "confusion_matrices.png")
        for path in folder.iterdir():
            log_artifact(path)


def train_fold(family: str, fold: int, *, index: pl.DataFrame, labels: pl.DataFrame,
               folds: pl.DataFrame, crop_cfg: dict[str, Any], cfg: dict[str, Any], seed: int,
               tracking: dict[str, Any], parent_run_id: str | None, out_model: Path,
               out_predictions: Path, checkpoint: Path, threads: int,
               predicted_index: pl.DataFrame | None = None,
               localization_error: dict[str, Any] | None = None,
               model_logger: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Train ``family``'s model on every fold but ``fold`` and predict ``fold``'s samples.

    ``predicted_index``: the crops of the train studies at their out-of-fold predicted
    points; a ``train.predicted_point_share`` of the training draws reads them.
    ``localization_error``: ``oof_error.json``, which sets the jitter when it is ``auto``.
    """
    torch.set_num_threads(max(threads, 1))
    device = resolve_device(cfg["device"], "train.device")
    train, val, skipped = _fold_samples(family, fold, index, labels, folds, cfg["skip_missing"])
    share = float(cfg["predicted_point_share"])
    with_twin = 0
    if share > 0 and predicted_index is not None:
        # a held-out study's predicted crops never reach training: only the train samples get twins
        with_twin = attach_predicted(train, family_samples(family, predicted_index))
    jitter = resolve_jitter(family, cfg, crop_cfg, localization_error or {})
    log.info("%s fold %d: %d training samples (skipped %s; %d with a predicted-point twin, drawn "
             "%.0f%% of the time), %d validation samples; jitter %s", family, fold, len(train), skipped,
             with_twin, 100 * share, len(val), jitter)
    fold_seed = seed + 1000 * fold + sum(map(ord, family))
    data_cfg = dataset_settings(family, crop_cfg, jitter, cfg)
    augment = build_augment(cfg["augment"])
    train_set = CropDataset(train, data_cfg, train=True, augment=augment, seed=fold_seed)
    val_set = CropDataset(val, data_cfg, train=False)
    seed_everything(fold_seed)  # the initial weights too derive from the seed
    start_weights = weights_provenance(cfg["weights"])
    model = build_model(family, crop_cfg, cfg)
    # what a resumed state must share with this job: settings, starting weights, data (crop
    # rows, labels, the crop arrays' identity) and the code, so a killed job edited or fed new
    # crops restarts
    fingerprint = _fingerprint(family, fold, seed, cfg, crop_cfg, jitter, with_twin,
                               sorted(s.study_id for s in train),
                               _data_digest(index, predicted_index, labels), code_digest(Path(__file__)),
                               start_weights)
    params = {"family": family, "fold": fold, "n_train": len(train), "n_val": len(val),
              "skipped_no_label": skipped["no_label"], "skipped_no_view": skipped["no_view"],
              "n_predicted_twins": with_twin, "resolved_point_jitter": jitter["point_jitter"],
              "resolved_slice_jitter": jitter["slice_jitter"],
              "resolved_view_dropout": data_cfg["view_dropout"],
              "resolved_precision": precision_name(autocast_dtype(device, cfg["precision"], "train.precision")),
              "start_weights": start_weights or FROM_SCRATCH, "train": cfg, "crops": crop_cfg}
    class_weights = np.asarray(cfg["class_weights"], dtype=np.float64)
    with mlflow_run(tracking, f"train/seed{seed}/{family}/fold{fold}", params, parent_run_id=parent_run_id,
                    tags={"stage": "train", "family": family, "fold": str(fold),
                          "seed": str(seed)}) as log_metrics:
        model, history = fit(model, train_set, val_set, cfg, device=device, seed=fold_seed,
                             checkpoint=checkpoint, fingerprint=fingerprint,
                             metric=family_metric(class_weights), log_metrics=log_metrics)
        loader = make_loader(val_set, cfg["batch_size"], False, 0, fold_seed)
        # float32, as the test set is graded: out-of-fold and test figures share the numerics
        logits, val_targets, _ = predict(model, loader, device)
        best = min(history, key=lambda h: h["val_metric" if cfg["select_by"] == "metric" else "val_loss"])
        summary = {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                   "best_val_metric": best.get("val_metric", float("nan"))}
        # the outputs first, then the tracking store (best effort: it never loses them)
        checkpoints.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                          "meta": {"family": family, "fold": fold, "crops": crop_cfg, "train": cfg,
                                   "history": history, **summary, "jitter": jitter,
                                   "precision": params["resolved_precision"], "start_weights": start_weights,
                                   "n_predicted_twins": with_twin,
                                   # the studies it learnt from: predict_oof checks that none
                                   # of them is graded by it (spinepipe.classify.held_out)
                                   "train_studies": sorted({s.study_id for s in train})}}, out_model)
        predictions_frame(val, logits, family, fold).write_parquet(out_predictions)
        log_metrics(summary, None)
        _log_fold_artifacts({"train": cfg, "crops": crop_cfg, "family": family, "fold": fold}, history,
                            val, logits, val_targets)
        if model_logger is not None and log_metrics.run_id is not None:
            # the fold model as an MLflow model of this run (best effort, as every write)
            log_metrics.attempt("model", model_logger, log_metrics.run_id)
    # the epoch checkpoint only serves a killed job; a finished one never resumes from it
    # (a rerun after a code change must train afresh)
    checkpoint.unlink(missing_ok=True)
    return summary
