"""The training loop of a severity model: weighted cross-entropy, AdamW with warm-up and
cosine decay, gradient clipping, mixed precision on GPU, checkpoint selection (optionally on
a moving average of the weights), resume, and the per-epoch figures MLflow records (losses,
metric, prediction spread, system figures)."""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from spinepipe import checkpoints
from spinepipe.classify.data import CropDataset
from spinepipe.classify.models import SeverityModel
from spinepipe.classify.weight_averaging import (
    ema_state,
    evaluated_model,
    make_ema,
    restore_ema,
    resumable,
)
from spinepipe.devices import autocast, autocast_dtype, grad_scaler
from spinepipe.seeding import seed_everything

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

log = logging.getLogger(__name__)


def severity_loss(out: dict[str, torch.Tensor], target: torch.Tensor, level: torch.Tensor,
                  class_weights: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Class-weighted cross-entropy over labelled outputs (target -1 is ignored), plus the
    auxiliary level loss. Normalised by the summed weights, as the metric is."""
    logits = out["logits"].float().reshape(-1, 3)
    flat = target.reshape(-1)
    if (flat >= 0).any():
        loss = F.cross_entropy(logits, flat, weight=class_weights, ignore_index=-1)
    else:
        loss = logits.sum() * 0.0
    if aux_weight and "level_logits" in out:
        loss = loss + aux_weight * F.cross_entropy(out["level_logits"].float(), level)
    return loss


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _worker_init(_: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(torch.initial_seed() % 2**32)


def make_loader(dataset: CropDataset, batch_size: int, shuffle: bool, workers: int, seed: int, *,
                pin_memory: bool = False, prefetch_factor: int = 2) -> DataLoader:
    """``pin_memory``: page-locked batches, so their copy to a GPU overlaps the step (only
    worth it for a cuda device); ``prefetch_factor``: batches each worker keeps ready (only
    with workers)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      worker_init_fn=_worker_init if workers else None, generator=generator,
                      persistent_workers=workers > 0, drop_last=False, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor if workers else None)


def loader_options(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """make_loader's keyword arguments from the train config: pinned memory only for a GPU."""
    return {"pin_memory": bool(cfg["pin_memory"]) and device.type == "cuda",
            "prefetch_factor": cfg["prefetch_factor"]}


@torch.no_grad()
def predict(model: SeverityModel, loader: DataLoader, device: torch.device,
            amp: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (N, n_outputs, 3), targets (N, n_outputs) and levels (N,) over a loader, under
    autocast to ``amp`` when given (float32 otherwise)."""
    model.eval()
    logits, targets, levels = [], [], []
    for batch in loader:
        with autocast(device, amp):
            out = model(batch["image"].to(device, non_blocking=True), batch["mask"].to(device))
        logits.append(out["logits"].float().cpu().numpy())
        targets.append(batch["target"].numpy())
        levels.append(batch["level"].numpy())
    return np.concatenate(logits), np.concatenate(targets), np.concatenate(levels)


def weighted_log_loss_from_logits(logits: np.ndarray, targets: np.ndarray,
                                  class_weights: np.ndarray) -> float:
    """The metric's per-row weighted multiclass log loss over labelled outputs."""
    flat_logits, flat_targets = logits.reshape(-1, 3), targets.reshape(-1)
    known = flat_targets >= 0
    if not known.any():
        return float("nan")
    log_probs = torch.from_numpy(flat_logits[known]).double().log_softmax(-1).numpy()
    weights = class_weights[flat_targets[known]]
    return float(-(weights * log_probs[np.arange(known.sum()), flat_targets[known]]).sum() / weights.sum())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _gpu_figures(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    figures = {"gpu_memory_mb": torch.cuda.memory_allocated(device) / 2**20}
    try:  # needs the NVML bindings; absent on some installs
        figures["gpu_utilization"] = float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - a missing optional figure is not an error
        pass
    return figures


def _resume(checkpoint: Path, fingerprint: str, model: SeverityModel, optimizer, scheduler,
            scaler, ema: ModelEmaV3 | None = None) -> tuple[int, list[dict], dict[str, Any]]:
    """(first epoch to train, history, best) from ``checkpoint`` when it holds this
    configuration's state (model, optimizer, schedule, scaler, weight average and RNG
    restored), else afresh."""
    fresh: tuple[int, list[dict], dict[str, Any]] = (0, [], {"score": float("inf"), "epoch": -1, "state": None})
    if not checkpoint.exists():
        return fresh
    state = checkpoints.load(checkpoint)  # on the CPU: the RNG state must stay there
    if state.get("fingerprint") != fingerprint:
        log.info("%s belongs to another configuration; starting afresh", checkpoint)
        return fresh
    if not resumable(state, ema):  # its best epoch was chosen on other weights
        log.info("%s was %s a weight average; starting afresh", checkpoint,
                 "trained without" if ema is not None else "selected on")
        return fresh
    model.load_state_dict(state["model"])
    restore_ema(ema, state)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    checkpoints.set_rng_state(state["rng"] if "rng" in state else {"torch": state["torch_rng"]})
    log.info("resuming from %s after epoch %d", checkpoint, state["epoch"])
    return state["epoch"] + 1, state["history"], state["best"]


def _epoch_batches(loader: DataLoader, train: CropDataset, seed: int,
                   epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """The training batches of ``epoch``: its shuffle and jitter derive from (seed, epoch), so a
    resumed run replays exactly the epochs an uninterrupted one would have. With workers,
    they start loading its first batches as soon as this returns."""
    loader.generator.manual_seed(seed + epoch)
    train.rng = np.random.default_rng(seed + epoch)
    if train.augment is not None and hasattr(train.augment, "set_random_seed"):
        train.augment.set_random_seed(seed + epoch)
    return iter(loader)


def _train_epoch(model: SeverityModel, batches: Iterator[dict[str, torch.Tensor]], optimizer, scheduler,
                 scaler, class_weights: torch.Tensor, cfg: dict[str, Any], device: torch.device,
                 amp: torch.dtype | None, ema: ModelEmaV3 | None = None) -> dict[str, float]:
    """One pass over ``batches``: mean loss, throughput and the share of the time spent
    waiting for data. ``ema``, when given, follows the weights after every step."""
    model.train()
    started = time.perf_counter()
    waiting, losses, seen = 0.0, [], 0
    mark = time.perf_counter()
    for batch in batches:
        waiting += time.perf_counter() - mark
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(images, batch["mask"].to(device))
        loss = severity_loss(out, batch["target"].to(device), batch["level"].to(device),
                             class_weights, cfg["aux_weight"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:  # the scheduler counts the steps (and is restored on resume)
            ema.update(model, step=scheduler.last_epoch)
        losses.append(float(loss.detach()))
        seen += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mark = time.perf_counter()
    elapsed = time.perf_counter() - started
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "epoch_seconds": elapsed,
            "samples_per_second": seen / max(elapsed, 1e-9), "data_wait_share": waiting / max(elapsed, 1e-9)}


def fit(model: SeverityModel, train: CropDataset, val: CropDataset, cfg: dict[str, Any], *,
        device: torch.device, seed: int, checkpoint: Path, fingerprint: str,
        metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
        log_metrics: Callable[[dict, int | None], None] | None = None) -> tuple[SeverityModel, list[dict]]:
    """Train, keep the best epoch by validation loss or ``metric`` (lower is better), and
    return the model at its best epoch with the per-epoch history. With ``ema_decay`` > 0,
    validation and selection read an exponential moving average of the weights
    (spinepipe.classify.weight_averaging), and the model returned holds the selected epoch's
    average.

    ``checkpoint`` receives the state after every epoch, before the epoch's figures go to
    ``log_metrics``; when it exists with the same ``fingerprint`` (config and data), training
    resumes after its last finished epoch. It is read weights-only (no unpickling).
    """
    seed_everything(seed)
    amp = autocast_dtype(device, cfg["precision"], "train.precision")
    memory_format = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema = make_ema(model, float(cfg["ema_decay"]))
    class_weights = torch.tensor(cfg["class_weights"], dtype=torch.float32, device=device)
    np_weights = np.asarray(cfg["class_weights"], dtype=np.float64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    options = loader_options(cfg, device)
    train_loader = make_loader(train, cfg["batch_size"], True, cfg["num_workers"], seed, **options)
    val_loader = make_loader(val, cfg["batch_size"], False, cfg["num_workers"], seed, **options)
    steps = max(len(train_loader), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg["warmup_epochs"] * steps, cfg["epochs"] * steps))
    scaler = grad_scaler(device, amp)
    start, history, best = _resume(checkpoint, fingerprint, model, optimizer, scheduler, scaler, ema)
    evaluated = evaluated_model(model, ema)
    batches = _epoch_batches(train_loader, train, seed, start) if start < cfg["epochs"] else iter(())
    for epoch in range(start, cfg["epochs"]):
        figures = _train_epoch(model, batches, optimizer, scheduler, scaler, class_weights, cfg, device,
                               amp, ema)
        if epoch + 1 < cfg["epochs"]:
            # the next epoch's first batches load while this one validates: on a GPU an
            # epoch of a few batches would otherwise wait for its first batch every time
            batches = _epoch_batches(train_loader, train, seed, epoch + 1)
        logits, targets, _ = predict(evaluated, val_loader, device, amp)
        probs = torch.from_numpy(logits).softmax(-1).numpy()
        record = {"epoch": epoch, "train_loss": figures["train_loss"],
                  "val_loss": weighted_log_loss_from_logits(logits, targets, np_weights),
                  "lr": optimizer.param_groups[0]["lr"],
                  "prob_std": float(probs.std(axis=0).mean()) if len(probs) else float("nan"),
                  **{k: figures[k] for k in ("epoch_seconds", "samples_per_second", "data_wait_share")},
                  "peak_memory_mb": _peak_memory_mb(device), **_gpu_figures(device)}
        if metric is not None and len(logits):
            record["val_metric"] = metric(logits, targets)
        history.append(record)
        current = record["val_metric"] if cfg["select_by"] == "metric" and "val_metric" in record \
            else record["val_loss"]
        if not math.isnan(current) and current < best["score"] or best["state"] is None:
            best = {"score": current, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}}
        log.info("epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v
                                         for k, v in record.items()})
        # the resume state first, then the tracking store: a tracking failure (or a kill
        # while logging) never costs a finished epoch
        checkpoints.save({"fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict(), "history": history, "best": best,
                          "rng": checkpoints.rng_state(), **ema_state(ema)}, checkpoint)
        if log_metrics is not None:
            log_metrics({k: v for k, v in record.items() if k != "epoch"}, epoch)
    model.load_state_dict(best["state"])
    log.info("best epoch %d (%s %.4f)", best["epoch"], cfg["select_by"], best["score"])
    return model.to(memory_format=torch.contiguous_format), history
