"""Benchmark: crop-stage crops/second, training samples/second and the share of step time
spent waiting for data, on this machine.

Uses a finished default run (``make run``): its metadata and coordinates for the crops, and
its crop cache for training. Prints the figures; targets are checked by reading them, never
by a timed test.

    .venv/bin/python benchmarks/bench_train.py [--studies 16] [--epochs 2] [--workers 0 1]
        [--precision fp32 bf16] [--layout contiguous channels_last]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from spinepipe.classify.data import CropDataset, build_augment, family_samples, label_targets
from spinepipe.classify.fold_model import build_model
from spinepipe.classify.jitter import resolve_jitter
from spinepipe.classify.training import fit
from spinepipe.config import load_config
from spinepipe.crops.build import build_crops
from spinepipe.dataset import read_labels
from spinepipe.metric import labels_to_long

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--family", default="spinal")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=[None], choices=["auto", "fp32", "bf16"],
                        help="train.precision values to compare (default: the config's)")
    parser.add_argument("--layout", nargs="+", default=[None], choices=["contiguous", "channels_last"],
                        help="memory layouts to compare (default: the config's train.channels_last)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    config = load_config(REPO / "config.yaml")
    results = args.results

    series = pl.read_parquet(results / "metadata" / "series.parquet").filter(pl.col("split") == "train")
    instances = pl.read_parquet(results / "metadata" / "instances.parquet").filter(pl.col("split") == "train")
    coordinates = pl.read_parquet(results / "localize" / "coordinates.parquet")
    studies = sorted(series["study_id"].unique().to_list())[:args.studies]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index = build_crops(studies, coordinates, instances, series, config["crops"], Path(tmp) / "c.npy")
        seconds = time.perf_counter() - start
    n_series = index.filter(pl.col("status") == "ok")["series_id"].n_unique()
    print(f"crops: {index.height} crops of {len(studies)} studies ({n_series} series decoded once each) "
          f"in {seconds:.2f} s = {index.height / seconds:.0f} crops/s")

    crop_index = pl.read_parquet(results / "crops" / "train" / "index.parquet")
    labels = read_labels(results / "synthetic" / "train.csv" if not config["data_dir"]
                         else Path(config["data_dir"]) / "train.csv")
    samples = family_samples(args.family, crop_index, label_targets(labels_to_long(labels)))
    samples = [s for s in samples if s.usable and (s.target >= 0).any()]
    cfg = config["train"] | {"epochs": args.epochs}
    error_file = results / "localize" / "oof_error.json"
    errors = json.loads(error_file.read_text()) if error_file.exists() else {}
    data = config["crops"] | resolve_jitter(args.family, cfg, config["crops"], errors)
    for workers, precision, layout in itertools.product(args.workers, args.precision, args.layout):
        run_cfg = cfg | {"num_workers": workers, "precision": precision or cfg["precision"],
                         "channels_last": cfg["channels_last"] if layout is None else layout == "channels_last"}
        with tempfile.TemporaryDirectory() as tmp:
            history = fit(build_model(args.family, config["crops"], run_cfg),
                          CropDataset(samples, data, train=True, augment=build_augment(cfg["augment"])),
                          CropDataset(samples[:32], data, train=False), run_cfg,
                          device=torch.device("cpu"), seed=0, checkpoint=Path(tmp) / "c.pt",
                          fingerprint="bench")[1]
        last = history[-1]
        layout_name = "channels-last" if run_cfg["channels_last"] else "contiguous"
        print(f"training ({args.family}, {len(samples)} samples, {cfg['backbone']}, {config['crops']['size']} px, "
              f"{workers} loader workers, precision {run_cfg['precision']}, {layout_name}): "
              f"{last['samples_per_second']:.0f} samples/s, "
              f"data wait {100 * last['data_wait_share']:.1f}% of step time, "
              f"peak memory {last['peak_memory_mb']:.0f} MB, train loss {last['train_loss']:.3f}, "
              f"val loss {last['val_loss']:.3f}")


if __name__ == "__main__":
    main()
