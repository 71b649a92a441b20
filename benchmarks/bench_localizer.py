"""Benchmark: localizer training cost and the error it reaches, per setting variant.

Uses a finished run's localizer inputs (stacks, headers, cross-reference, folds, coordinates;
any run that got past ``stacks_index``). For each variant (settings layered on the run's
``localize`` config) it trains the point or slice model of one task and fold, as rule
train_localizer does, and prints: training seconds, epoch seconds, samples/s, the share of
step time spent assembling batches, and the validation error reached (point: median and p95
in mm; slice: within one slice). Figures are printed, never asserted.

    .venv/bin/python benchmarks/bench_localizer.py RUN_DIR [--tasks sagittal_t1] [--folds 0]
        [--kinds point] [--variants current all_neighbours channels_last]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from spinepipe.config import deep_update, load_config
from spinepipe.dataset import read_coordinates
from spinepipe.localize.pipeline import fold_samples, model_settings
from spinepipe.localize.samples import POINTS_PER_TASK, SLICE_TARGETS
from spinepipe.localize.stacks import StackCache
from spinepipe.localize.training import train_point_model, train_slice_model

REPO = Path(__file__).resolve().parents[1]

# name -> settings layered on the config's localize section (nested dicts merged)
VARIANTS: dict[str, dict[str, Any]] = {
    "current": {},
    "all_neighbours": {"point_model": {"neighbour_sampling": "all"}},
    "random_neighbour": {"point_model": {"neighbour_sampling": "random"}},
    "channels_last": {"channels_last": True},
    "contiguous": {"channels_last": False},
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "random_channels_last": {"point_model": {"neighbour_sampling": "random"}, "channels_last": True},
    "random_channels_last_epochs_30": {"point_model": {"neighbour_sampling": "random", "epochs": 30},
                                       "channels_last": True},
    "random_channels_last_epochs_10": {"point_model": {"neighbour_sampling": "random", "epochs": 10},
                                       "channels_last": True},
    "epochs_15": {"point_model": {"epochs": 15}},
    "epochs_12": {"point_model": {"epochs": 12}},
    "epochs_10": {"point_model": {"epochs": 10}},
    "epochs_8": {"point_model": {"epochs": 8}},
    "slice_epochs_6": {"slice_model": {"epochs": 6}},
    "slice_epochs_4": {"slice_model": {"epochs": 4}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tasks", nargs="+", default=["sagittal_t1"])
    parser.add_argument("--folds", nargs="+", type=int, default=[0])
    parser.add_argument("--kinds", nargs="+", default=["point"], choices=["point", "slice"])
    parser.add_argument("--variants", nargs="*", default=["current"], choices=sorted(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--extra", nargs="+", default=[], metavar="NAME=JSON",
                        help='further variants, e.g. bs8=\'{"point_model": {"batch_size": 8}}\'')
    parser.add_argument("--epochs-log", action="store_true", help="log every epoch's figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.epochs_log:
        logging.getLogger("spinepipe.localize.training").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    variants = {name: VARIANTS[name] for name in args.variants}
    variants |= {name: json.loads(text) for name, text in (e.split("=", 1) for e in args.extra)}
    config = load_config(args.config)
    os.chdir(args.run_dir)  # the stack index holds paths relative to the run's directory
    results = Path("results")
    data_dir = Path(config["data_dir"]) if config["data_dir"] else results / "synthetic"
    tables = {
        "coordinates": read_coordinates(data_dir / "train_label_coordinates.csv"),
        "instances": pl.read_parquet(results / "metadata" / "train" / "instances.parquet"),
        "series": pl.read_parquet(results / "metadata" / "train" / "series.parquet"),
        "xref": pl.read_parquet(results / "metadata" / "axial_xref.parquet"),
        "folds": pl.read_parquet(results / "folds.parquet"),
    }
    cache = StackCache(pl.read_parquet(results / "localize" / "stacks" / "train" / "index.parquet"))
    print("| kind | task | fold | variant | train s | epoch s | samples/s | data share | "
          "val error median | val error p95 / within one |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for task in args.tasks:
            for fold in args.folds:
                for name, overlay in variants.items():
                    cfg = deep_update(config["localize"], overlay) | {"seed": config["seed"]}
                    train, val = fold_samples(kind, task, fold, cache=cache, cfg=cfg, **tables)
                    settings = model_settings(kind, task, fold, cfg)
                    start = time.perf_counter()
                    if kind == "point":
                        _, m = train_point_model(train, val, POINTS_PER_TASK[task], settings)
                        errors = (f"{m['val_point_error_mm_median']:.2f} mm | "
                                  f"{m['val_point_error_mm_p95']:.2f} mm")
                        rate, share = f"{m['samples_per_second']:.0f}", f"{m['data_share']:.0%}"
                    else:
                        _, m = train_slice_model(train, val, SLICE_TARGETS[task], settings)
                        errors = f"exact {m['val_slice_accuracy']:.0%} | {m['val_slice_within_one']:.0%}"
                        rate, share = f"{m.get('samples_per_second', float('nan')):.1f}", "-"
                    seconds = time.perf_counter() - start
                    print(f"| {kind} | {task} | {fold} | {name} | {seconds:.1f} | {m['epoch_seconds']:.2f} | "
                          f"{rate} | {share} | {errors} |", flush=True)


if __name__ == "__main__":
    main()
