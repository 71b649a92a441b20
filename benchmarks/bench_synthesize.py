"""Benchmark: synthetic dataset generation speed and size.

Prints studies/second (one process, and N worker processes over shards as the workflow
runs them) and bytes/study, for the default config's image sizes.

    .venv/bin/python benchmarks/bench_synthesize.py --studies 16 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from spinepipe.config import deep_update, load_config
from spinepipe.synth.generate import generate_shard, merge_shards, shard_indices

REPO = Path(__file__).resolve().parents[1]


def _shard(args: tuple) -> Path:
    synthetic, seed, indices, shard_dir = args
    generate_shard(synthetic, seed, "train", indices, shard_dir)
    return shard_dir


def run(studies: int, workers: int, out: Path) -> float:
    config = deep_update(load_config(REPO / "config.yaml"), {"synthetic": {"n_train": studies}})
    syn = config["synthetic"]
    jobs = [(syn, config["seed"], r, out / "shards" / f"train_{i:04d}")
            for i, r in enumerate(shard_indices(config["seed"], "train", studies, max(workers, 1)))]
    start = time.perf_counter()
    # spawn, not fork: forked children inherit the parent's thread-pool locks and can hang
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        shard_dirs = list(pool.map(_shard, jobs))
    merge_shards(shard_dirs, [], out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        single = run(args.studies, 1, Path(tmp) / "single")
        images = Path(tmp) / "single" / "train_images"
        files = list(images.rglob("*.dcm"))
        size = sum(p.stat().st_size for p in files)
        shutil.rmtree(Path(tmp) / "single")
        parallel = run(args.studies, args.workers, Path(tmp) / "parallel")
    print(f"studies: {args.studies} (default config image sizes)")
    print(f"1 process:   {args.studies / single:.2f} studies/s ({single:.1f} s)")
    print(f"{args.workers} processes: {args.studies / parallel:.2f} studies/s ({parallel:.1f} s), "
          f"speed-up x{single / parallel:.2f} in the same run")
    print(f"bytes/study: {size / args.studies / 1e6:.1f} MB ({len(files) / args.studies:.0f} DICOM files/study)")
    print(f"projected for 2,000 studies with {args.workers} processes: "
          f"{2000 / (args.studies / parallel) / 60:.0f} min, {size / args.studies * 2000 / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
