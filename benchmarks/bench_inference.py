"""Benchmark: seconds per test study from DICOM to probabilities, split across stages.

Runs, in one process and on the test split of a finished default run (``make run``), every
inference stage with the run's trained models: header parse, localizer stacks, level
localization, crops, every fold model of every family (with the configured TTA), ensemble
and submission. Prints seconds per study per stage and the total.

    .venv/bin/python benchmarks/bench_inference.py [--results results]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from spinepipe.classify.inference import assemble_submission, ensemble, predict_family
from spinepipe.config import load_config
from spinepipe.crops.build import build_crops
from spinepipe.dataset import read_labels, read_series_descriptions, read_submission
from spinepipe.localize.pipeline import localize
from spinepipe.localize.stacks import build_stacks
from spinepipe.metadata import parse_instances, summarize_series

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    config = load_config(REPO / "config.yaml")
    data = args.results / "synthetic" if not config["data_dir"] else Path(config["data_dir"])
    table = read_series_descriptions(data / "test_series_descriptions.csv")
    n_studies = table["study_id"].n_unique()
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *a, **k):
        start = time.perf_counter()
        out = fn(*a, **k)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
        return out

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        instances = timed("metadata (headers)", parse_instances, data / "test_images", table)
        series = timed("metadata (headers)", summarize_series, instances, table)
        loc = config["localize"]
        stacks = timed("localizer stacks", build_stacks, instances, series, loc["image_size"],
                       tmp / "stacks.npy")
        checkpoints = sorted((args.results / "localize" / "models").glob("*.pt"))
        predictions, _ = timed("localization", localize, "test", checkpoints=checkpoints,
                               stack_index=stacks, instances=instances, series=series, folds=None,
                               cfg=loc | {"foramen_offset_mm": config["geometry"]["foramen_offset_mm"]},
                               threads=args.threads)
        coordinates = predictions.with_columns(source=pl.lit("predicted"))
        studies = sorted(table["study_id"].unique().to_list())
        index = timed("crops", build_crops, studies, coordinates, instances, series, config["crops"],
                      tmp / "crops.npy").with_columns(array=pl.lit(str(tmp / "crops.npy")))
        inference = config["inference"]
        frames = [timed("severity models", predict_family, path, index, inference["tta"],
                        inference["batch_size"])
                  for family in config["train"]["families"]
                  for path in sorted((args.results / "train" / "models").glob(f"{family}_fold*.pt"))]
        temperatures = json.loads((args.results / "train" / "temperatures.json").read_text())
        ensembled = timed("ensemble + submission", ensemble, pl.concat(frames), temperatures,
                          inference["fold_weights"])
        timed("ensemble + submission", assemble_submission, read_submission(data / "sample_submission.csv"),
              ensembled, read_labels(data / "train.csv"), index, None, series)
    total = sum(timings.values())
    print(f"{n_studies} test studies, {len(frames)} fold models, {args.threads} threads")
    for stage, seconds in timings.items():
        print(f"  {stage:24s} {seconds / n_studies:7.3f} s/study  ({100 * seconds / total:4.1f}%)")
    print(f"  {'total':24s} {total / n_studies:7.3f} s/study")


if __name__ == "__main__":
    main()
