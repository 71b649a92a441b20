"""Benchmark: crop-stage crops/second, the data loader's samples/second alone (no model), and
training samples/second with the share of step time spent waiting for data, on this machine.

Uses a finished default run (``make run``): its metadata and coordinates for the crops, and
its crop cache for training (``--crops fresh``: the crops this benchmark cuts of ``--studies``
studies instead, at the crop settings of the config, e.g. ``--configfile configs/gpu.yaml``).
Run it from the run's working directory: the crop index names its arrays relative to it.

The loader line compares the DataLoader's rate with a model's consumption (``--consume``,
samples/s of one training job; default the H100's best severity job of configs/gpu.yaml) and
says how many loader workers would feed it. Prints the figures; targets are checked by
reading them, never by a timed test.

    .venv/bin/python benchmarks/bench_train.py [--studies 16] [--epochs 2] [--workers 0 1]
        [--precision fp32 bf16] [--layout contiguous channels_last]
        [--loader-only] [--loader-epochs 3] [--consume 940] [--crops run|fresh]
        [--configfile configs/gpu.yaml]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from spinepipe.classify.data import (
    CropDataset,
    Sample,
    build_augment,
    family_samples,
    label_targets,
)
from spinepipe.classify.fold_model import build_model
from spinepipe.classify.jitter import resolve_jitter
from spinepipe.classify.training import fit, make_loader
from spinepipe.config import load_config
from spinepipe.crops.build import build_crops
from spinepipe.crops.extract import CropSpec
from spinepipe.crops.views import VIEWS
from spinepipe.dataset import read_labels
from spinepipe.metric import labels_to_long
from spinepipe.npy_rows import NpyRows

REPO = Path(__file__).resolve().parents[1]
# samples/s of the fastest severity training job of configs/gpu.yaml on an H100 (num_workers 0)
H100_CONSUMPTION = 940.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[],
                        help="overlays on config.yaml (e.g. configs/gpu.yaml), as snakemake --configfile")
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--family", default="spinal")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=[None], choices=["auto", "fp32", "bf16"],
                        help="train.precision values to compare (default: the config's)")
    parser.add_argument("--layout", nargs="+", default=[None], choices=["contiguous", "channels_last"],
                        help="memory layouts to compare (default: the config's train.channels_last)")
    parser.add_argument("--loader-only", action="store_true",
                        help="measure the data loader alone (skip the crop stage unless --crops fresh, "
                             "and the model training)")
    parser.add_argument("--loader-epochs", type=int, default=3,
                        help="passes over the samples per loader measurement (the first is not counted "
                             "when there are more: it starts the workers)")
    parser.add_argument("--consume", type=float, default=H100_CONSUMPTION,
                        help="samples/s one training job consumes, to compare the loader with")
    parser.add_argument("--crops", choices=["run", "fresh"], default="run",
                        help="train on the run's crop cache, or on the crops this benchmark cuts")
    return parser.parse_args()


def crop_stage(studies: list[int], results: Path, crops_cfg: dict[str, Any], array: Path) -> pl.DataFrame:
    """Cut the train crops of ``studies`` into ``array``, print the rate; the index (with its
    ``array`` column, as the crops_index rule writes it)."""
    series = pl.read_parquet(results / "metadata" / "series.parquet").filter(pl.col("split") == "train")
    instances = pl.read_parquet(results / "metadata" / "instances.parquet").filter(pl.col("split") == "train")
    coordinates = pl.read_parquet(results / "localize" / "coordinates.parquet")
    start = time.perf_counter()
    index = build_crops(studies, coordinates, instances, series, crops_cfg, array)
    seconds = time.perf_counter() - start
    n_series = index.filter(pl.col("status") == "ok")["series_id"].n_unique()
    print(f"crops: {index.height} crops of {len(studies)} studies ({n_series} series decoded once each) "
          f"in {seconds:.2f} s = {index.height / seconds:.0f} crops/s")
    return index.with_columns(array=pl.lit(str(array)))


def check_cache_shape(index: pl.DataFrame, crops_cfg: dict[str, Any]) -> None:
    """The run's crop cache must have been cut at the config's crop settings."""
    spec = CropSpec.for_view(next(iter(VIEWS.values())), crops_cfg)
    expected = (spec.cached_slices, spec.cached_size, spec.cached_size)
    found = NpyRows(index["array"][0]).shape[1:]
    if found != expected:
        raise SystemExit(f"the run's crops are {found} (slices, px, px), the config asks for {expected}: "
                         "pass --crops fresh to cut crops at the config's settings")


def train_samples(family: str, crop_index: pl.DataFrame, labels_csv: Path) -> list[Sample]:
    samples = family_samples(family, crop_index, label_targets(labels_to_long(read_labels(labels_csv))))
    return [s for s in samples if s.usable and (s.target >= 0).any()]


def loader_rate(dataset: CropDataset, batch_size: int, workers: int, prefetch_factor: int,
                epochs: int, validation_s: float) -> tuple[float, float, float]:
    """Samples/s of the DataLoader alone and the seconds to an epoch's first batch, when the
    epoch's iterator is made after validation (the wait a training loop sees if it starts the
    next epoch only then) and when it is made before ``validation_s`` seconds of validation
    (what ``fit`` does): medians over the passes after the first (which starts the persistent
    workers), or the only pass."""
    loader = make_loader(dataset, batch_size, True, workers, seed=0, prefetch_factor=prefetch_factor)
    rates, firsts, overlapped = [], [], []
    for epoch in range(epochs):
        early = epoch % 2 == 1  # alternate: iterator made before or after the validation pause
        batches = iter(loader) if early else None
        time.sleep(validation_s)
        start, seen, first = time.perf_counter(), 0, None
        for batch in batches if early else loader:
            first = first if first is not None else time.perf_counter() - start
            seen += batch["image"].shape[0]
        rates.append(seen / max(time.perf_counter() - start, 1e-9))
        (overlapped if early else firsts).append(first or 0.0)
    del loader  # stops the workers before the next measurement starts its own
    return (statistics.median(rates[1:] or rates), statistics.median(firsts[1:] or firsts),
            statistics.median(overlapped) if overlapped else float("nan"))


def print_loader(family: str, n_samples: int, crops_cfg: dict[str, Any], workers: int,
                 prefetch_factor: int, rate: float, first: float, overlapped: float, validation_s: float,
                 consume: float) -> None:
    """The loader's rate against a consumption of ``consume`` samples/s: the workers that
    would keep up, and the wait for each epoch's first batch that no worker count removes
    (an epoch of these samples is ``n_samples / consume`` s of model time)."""
    per_worker = rate / max(workers, 1)  # workers 0: the main process does the work of one
    needed = math.ceil(consume / per_worker)
    model_seconds = n_samples / consume
    slices = 2 * crops_cfg["slices"] + 1
    print(f"loader alone ({family}, {n_samples} samples, {crops_cfg['size']} px, {slices} slices per view, "
          f"{workers} workers, prefetch {prefetch_factor}): {rate:.0f} samples/s = {per_worker:.0f} per worker; "
          f"{rate / consume:.2f}x a consumption of {consume:.0f} samples/s, which needs about {needed} workers; "
          f"first batch of an epoch after {1000 * first:.0f} ms = "
          f"{100 * first / (first + model_seconds):.0f}% data wait on an epoch of these samples at that rate; "
          f"started before {1000 * validation_s:.0f} ms of validation (fit's order): after {1000 * overlapped:.0f} ms "
          f"= {100 * overlapped / (overlapped + model_seconds):.0f}%")


def print_training(family: str, n_samples: int, cfg: dict[str, Any], size: int, run_cfg: dict[str, Any],
                   last: dict[str, float]) -> None:
    layout_name = "channels-last" if run_cfg["channels_last"] else "contiguous"
    print(f"training ({family}, {n_samples} samples, {cfg['backbone']}, {size} px, "
          f"{run_cfg['num_workers']} loader workers, precision {run_cfg['precision']}, {layout_name}): "
          f"{last['samples_per_second']:.0f} samples/s, "
          f"data wait {100 * last['data_wait_share']:.1f}% of step time, "
          f"peak memory {last['peak_memory_mb']:.0f} MB, train loss {last['train_loss']:.3f}, "
          f"val loss {last['val_loss']:.3f}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    config = load_config(REPO / "config.yaml", *args.configfile)
    results = args.results
    cfg = config["train"] | {"epochs": args.epochs}
    labels_csv = (results / "synthetic" / "train.csv" if not config["data_dir"]
                  else Path(config["data_dir"]) / "train.csv")
    with tempfile.TemporaryDirectory() as tmp:
        crop_index = None
        if not args.loader_only or args.crops == "fresh":
            series = pl.read_parquet(results / "metadata" / "series.parquet").filter(pl.col("split") == "train")
            studies = sorted(series["study_id"].unique().to_list())[:args.studies]
            crop_index = crop_stage(studies, results, config["crops"], Path(tmp) / "c.npy")
        if args.crops == "run":
            crop_index = pl.read_parquet(results / "crops" / "train" / "index.parquet")
            check_cache_shape(crop_index, config["crops"])
        samples = train_samples(args.family, crop_index, labels_csv)
        error_file = results / "localize" / "oof_error.json"
        errors = json.loads(error_file.read_text()) if error_file.exists() else {}
        data = config["crops"] | resolve_jitter(args.family, cfg, config["crops"], errors)
        for workers in args.workers:
            dataset = CropDataset(samples, data, train=True, augment=build_augment(cfg["augment"]))
            # an epoch's validation: with 3 folds, half as many samples as it trains on, at the consumption rate
            validation_s = len(samples) / 2 / args.consume
            rate, first, overlapped = loader_rate(dataset, cfg["batch_size"], workers, cfg["prefetch_factor"],
                                                  args.loader_epochs, validation_s)
            print_loader(args.family, len(samples), config["crops"], workers, cfg["prefetch_factor"],
                         rate, first, overlapped, validation_s, args.consume)
        if args.loader_only:
            return
        for workers, precision, layout in itertools.product(args.workers, args.precision, args.layout):
            run_cfg = cfg | {"num_workers": workers, "precision": precision or cfg["precision"],
                             "channels_last": cfg["channels_last"] if layout is None else layout == "channels_last"}
            with tempfile.TemporaryDirectory() as ckpt:
                history = fit(build_model(args.family, config["crops"], run_cfg),
                              CropDataset(samples, data, train=True, augment=build_augment(cfg["augment"])),
                              CropDataset(samples[:32], data, train=False), run_cfg,
                              device=torch.device("cpu"), seed=0, checkpoint=Path(ckpt) / "c.pt",
                              fingerprint="bench")[1]
            print_training(args.family, len(samples), cfg, config["crops"]["size"], run_cfg, history[-1])


if __name__ == "__main__":
    main()
