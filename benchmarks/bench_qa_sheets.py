"""Benchmark: seconds per study sheet, and what one sheet costs by part.

On a finished run (``make run``), loads the test split's sheet sources once (as the
``qa_sheets`` rule does) and renders every test study's sheet to a temporary folder, timing
the gathering of each study's inputs and the rendering separately. Prints the load time, the
per-sheet median and 90th percentile of both parts, and the sheet size.

    .venv/bin/python benchmarks/bench_qa_sheets.py [--results results] [--dpi 80]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from spinepipe.config import load_config
from spinepipe.qa.sheet import render_study_sheet
from spinepipe.qa.sources import SplitSources

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(REPO / "config.yaml")
    r = args.results
    start = time.perf_counter()
    sources = SplitSources.from_files(
        split="test", series=r / "metadata/series.parquet", instances=r / "metadata/instances.parquet",
        stacks=r / "localize/stacks/test/index.parquet", predictions=r / "localize/predictions_test.parquet",
        coordinates=r / "localize/coordinates.parquet", crop_index=r / "crops/test/index.parquet",
        crop_cfg=config["crops"], probabilities=r / "submission.csv",
        labels=(r / "synthetic/test_labels.csv") if (r / "synthetic/test_labels.csv").is_file() else None,
        reasons=r / "localize/unlocalized_test.csv",
        foramen_offset_mm=config["geometry"]["foramen_offset_mm"])
    load = time.perf_counter() - start
    gather, render, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for study_id in sources.studies():
            t0 = time.perf_counter()
            inputs = sources.inputs(study_id)
            t1 = time.perf_counter()
            out = Path(tmp) / f"{study_id}.png"
            render_study_sheet(inputs, out, dpi=args.dpi)
            t2 = time.perf_counter()
            gather.append(t1 - t0)
            render.append(t2 - t1)
            sizes.append(out.stat().st_size)
    total = np.array(gather) + np.array(render)
    print(f"test studies: {len(total)}; sources loaded once in {load:.2f} s")
    for name, values in (("gather inputs", gather), ("render", render), ("sheet total", total)):
        print(f"{name:>14}: median {np.median(values):.3f} s, p90 {np.percentile(values, 90):.3f} s per study")
    print(f"sheet size: median {np.median(sizes) / 1024:.0f} KiB at {args.dpi} dpi")


if __name__ == "__main__":
    main()
