"""Training loops of the localization models (CPU or GPU), logged to MLflow."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from spinepipe import checkpoints
from spinepipe.devices import autocast, autocast_dtype, grad_scaler, resolve_device
from spinepipe.localize.models import PointModel, SliceModel, build_localizer, local_soft_argmax
from spinepipe.localize.samples import PointSample, SliceSample
from spinepipe.seeding import seed_everything

log = logging.getLogger(__name__)
CPU = torch.device("cpu")  # default device of the evaluation helpers


def point_augmenter(cfg: dict[str, Any]) -> A.Compose:
    """The point model's training augmentation (``point_model.augment`` with the seed)."""
    return A.Compose(
        [A.Affine(translate_percent=(-cfg["shift"], cfg["shift"]), scale=(1 - cfg["scale"], 1 + cfg["scale"]),
                  rotate=(-cfg["rotate"], cfg["rotate"]), p=0.9),
         A.RandomBrightnessContrast(0.15, 0.15, p=0.7),
         A.RandomGamma((80, 120), p=0.5)],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=cfg["seed"],
    )


def _batch(samples: list[PointSample], augment: A.Compose | None) -> tuple[torch.Tensor, ...]:
    images, points, masks = [], [], []
    for s in samples:
        image, pts = s.image, s.points
        if augment is not None:
            out = augment(image=image, keypoints=pts)
            image, pts = out["image"], np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
        h, w = image.shape
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
        images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])
        points.append(torch.from_numpy(pts / np.array([w, h])).float())
        masks.append(torch.from_numpy(s.mask & inside))
    return torch.stack(images), torch.stack(points), torch.stack(masks)


def point_loss(out: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor,
               sigma_cells: float = 1.5) -> torch.Tensor:
    """L1 on the soft-argmax position plus cross-entropy against a Gaussian target heatmap."""
    if not mask.any():
        return out["xy"].sum() * 0.0
    logits = out["logits"]
    b, k, h, w = logits.shape
    gx = (torch.arange(w, dtype=logits.dtype, device=logits.device) + 0.5) / w
    gy = (torch.arange(h, dtype=logits.dtype, device=logits.device) + 0.5) / h
    dx = (gx[None, None, None, :] - target[..., 0, None, None]) * w
    dy = (gy[None, None, :, None] - target[..., 1, None, None]) * h
    heat = torch.exp(-(dx**2 + dy**2) / (2 * sigma_cells**2))
    heat = heat / heat.flatten(2).sum(-1).clamp_min(1e-8)[..., None, None]
    ce = -(heat * logits.flatten(2).log_softmax(-1).view_as(logits)).flatten(2).sum(-1)
    l1 = (out["xy"] - target).abs().sum(-1) * max(h, w)
    return (ce[mask].mean() + l1[mask].mean())


def _schedule(optimizer, epochs: int, steps_per_epoch: int, warmup: int = 1):
    total = max(epochs * steps_per_epoch, 1)
    warm = max(warmup * steps_per_epoch, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1))))


def evaluate_points(model: PointModel, samples: list[PointSample], batch_size: int,
                    device: torch.device = CPU,
                    memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, float]:
    model.eval()
    errors, losses = [], []
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            images, target, mask = (t.to(device) for t in _batch(chunk, None))
            images = images.contiguous(memory_format=memory_format)
            out = model(images)
            losses.append(float(point_loss(out, target, mask)))
            size = np.array(images.shape[-1:-3:-1])
            # validated with the decoding inference uses (peak-local, not the global mean)
            err_px = ((local_soft_argmax(out["logits"].flatten(2).softmax(-1).view_as(out["logits"]))
                       - target).cpu().numpy() * size)
            mask = mask.cpu()
            for s, e, m in zip(chunk, err_px, mask.numpy()):
                errors += list(np.hypot(e[m, 0], e[m, 1]) * s.mm_per_px)
    return {"val_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_point_error_mm_median": float(np.median(errors)) if errors else float("nan"),
            "val_point_error_mm_p95": float(np.percentile(errors, 95)) if errors else float("nan")}


def epoch_draw(samples: list[PointSample], sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of the samples one epoch trains on, shuffled. ``all``: every sample; ``random``:
    one sample of each group (an annotated slice or one of its neighbours), drawn anew each
    epoch, so the neighbours teach slice tolerance at the cost of one sample per slice."""
    if sampling == "all":
        return rng.permutation(len(samples))
    members: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        members.setdefault(s.group if s.group >= 0 else -1 - i, []).append(i)
    chosen = np.array([m[rng.integers(len(m))] for m in members.values()], dtype=np.int64)
    return rng.permutation(chosen)


def train_point_model(train: list[PointSample], val: list[PointSample], n_points: int,
                      cfg: dict[str, Any], logger=None) -> tuple[PointModel, dict[str, float]]:
    seed_everything(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    device = resolve_device(cfg["device"], "localize.device")
    model = build_localizer("point", cfg["backbone"], n_points, cfg["weights"]).to(device)
    memory_format = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    amp = autocast_dtype(device, cfg["precision"], "localize.precision")
    scaler = grad_scaler(device, amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    batch_size = cfg["batch_size"]
    steps = math.ceil(len(epoch_draw(train, cfg["neighbour_sampling"], np.random.default_rng(0))) / batch_size)
    scheduler = _schedule(optimizer, cfg["epochs"], steps)
    augment = point_augmenter(cfg["augment"] | {"seed": cfg["seed"]})
    metrics: dict[str, float] = {}
    for epoch in range(cfg["epochs"]):
        model.train()
        order = epoch_draw(train, cfg["neighbour_sampling"], rng)
        start, total, data_seconds = time.perf_counter(), 0.0, 0.0
        for i in range(0, len(order), batch_size):
            data_start = time.perf_counter()
            images, target, mask = _batch([train[j] for j in order[i:i + batch_size]], augment)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            target, mask = target.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            data_seconds += time.perf_counter() - data_start
            with autocast(device, amp):
                out = model(images)
            loss = point_loss(out, target, mask)  # float32: the model returns float32 logits
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach()) * len(images)
        epoch_seconds = time.perf_counter() - start
        metrics = {"train_loss": total / max(len(order), 1), "epoch_seconds": epoch_seconds,
                   "samples_per_second": len(order) / epoch_seconds,
                   "data_share": data_seconds / epoch_seconds,
                   "lr": scheduler.get_last_lr()[0],
                   **evaluate_points(model, val, batch_size, device, memory_format)}
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
        if logger is not None:
            logger(metrics, epoch)
    return model.to(memory_format=torch.contiguous_format).cpu(), metrics


def _slice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over slices for each target with a known slice."""
    known = targets >= 0
    if not known.any():
        return logits.sum() * 0.0
    per_target = logits.permute(0, 2, 1)[known]  # (n_known, S)
    return F.cross_entropy(per_target, targets[known])


def evaluate_slices(model: SliceModel, samples: list[SliceSample],
                    device: torch.device = CPU) -> dict[str, float]:
    model.eval()
    hits, near, losses = [], [], []
    with torch.no_grad():
        for s in samples:
            logits = model(torch.from_numpy(s.stack)[None].to(device))
            targets = torch.from_numpy(s.targets)[None].to(device)
            losses.append(float(_slice_loss(logits, targets)))
            pred = logits[0].argmax(0).cpu().numpy()
            known = s.targets >= 0
            hits += list(pred[known] == s.targets[known])
            near += list(np.abs(pred[known] - s.targets[known]) <= 1)
    return {"val_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_slice_accuracy": float(np.mean(hits)) if hits else float("nan"),
            "val_slice_within_one": float(np.mean(near)) if near else float("nan")}


def train_slice_model(train: list[SliceSample], val: list[SliceSample], n_targets: int,
                      cfg: dict[str, Any], logger=None) -> tuple[SliceModel, dict[str, float]]:
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"], "localize.device")
    amp = autocast_dtype(device, cfg["precision"], "localize.precision")
    scaler = grad_scaler(device, amp)
    model = build_localizer("slice", cfg["backbone"], n_targets, cfg["weights"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = _schedule(optimizer, cfg["epochs"], len(train))
    metrics: dict[str, float] = {}
    for epoch in range(cfg["epochs"]):
        model.train()
        start, total = time.perf_counter(), 0.0
        for j in np.random.permutation(len(train)):
            s = train[j]
            stack = s.stack * np.random.uniform(0.85, 1.15)  # intensity jitter
            with autocast(device, amp):
                logits = model(torch.from_numpy(stack.astype(np.float32))[None].to(device))
            loss = _slice_loss(logits.float(), torch.from_numpy(s.targets)[None].to(device))
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach())
        metrics = {"train_loss": total / max(len(train), 1), "epoch_seconds": time.perf_counter() - start,
                   "lr": scheduler.get_last_lr()[0], **evaluate_slices(model, val, device)}
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
        if logger is not None:
            logger(metrics, epoch)
    return model.cpu(), metrics


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """The model's weights and ``meta``, in a file read back weights-only."""
    checkpoints.save({"state_dict": model.state_dict(), "meta": meta}, path)
