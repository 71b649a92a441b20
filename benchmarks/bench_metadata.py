"""Benchmark: header-only metadata parse versus reading pixel data too.

Generates (once, into --data-dir) a synthetic dataset of at least 200 studies, then times
in one run: the metadata stage's header-only parse (pixel data deferred, never decoded)
and a plain pydicom read that decodes every pixel array. Prints files/second and the ratio.

    .venv/bin/python benchmarks/bench_metadata.py --studies 200 --data-dir /tmp/bench200
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pydicom

from spinepipe.config import deep_update, load_config
from spinepipe.dataset import read_series_descriptions
from spinepipe.metadata import parse_instances
from spinepipe.synth.generate import generate_shard, merge_shards, shard_indices

REPO = Path(__file__).resolve().parents[1]


def _shard(args: tuple) -> Path:
    synthetic, seed, split, indices, shard_dir = args
    generate_shard(synthetic, seed, split, indices, shard_dir)
    return shard_dir


def ensure_dataset(out: Path, studies: int, workers: int) -> None:
    if (out / "train_series_descriptions.csv").is_file():
        return
    config = deep_update(load_config(REPO / "config.yaml"),
                         {"synthetic": {"n_train": studies, "n_test": 1}})
    syn = config["synthetic"]
    jobs = [(syn, config["seed"], "train", r, out / "shards" / f"train_{i:04d}")
            for i, r in enumerate(shard_indices(config["seed"], "train", studies, max(1, studies // 10)))]
    jobs.append((syn, config["seed"], "test", [0], out / "shards" / "test_0000"))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(_shard, jobs))
    merge_shards(done[:-1], done[-1:], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/spinepipe-bench-200"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_dataset(args.data_dir, args.studies, args.workers)
    table = read_series_descriptions(args.data_dir / "train_series_descriptions.csv")
    files = sorted((args.data_dir / "train_images").glob("*/*/*.dcm"))

    start = time.perf_counter()
    instances = parse_instances(args.data_dir / "train_images", table, cache_dir=None)
    header_s = time.perf_counter() - start

    start = time.perf_counter()
    pixels = 0
    for path in files:
        pixels += pydicom.dcmread(path).pixel_array.size
    full_s = time.perf_counter() - start

    print(f"dataset: {table['study_id'].n_unique()} studies, {len(files)} files, "
          f"{sum(p.stat().st_size for p in files) / 1e9:.2f} GB")
    print(f"header-only parse (metadata stage): {instances.height / header_s:.0f} files/s ({header_s:.1f} s)")
    print(f"full read with pixel decode:        {len(files) / full_s:.0f} files/s ({full_s:.1f} s)")
    print(f"header-only is x{full_s / header_s:.2f} faster in the same run")


if __name__ == "__main__":
    main()
