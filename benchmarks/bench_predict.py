"""Benchmark: grading new studies with a bundle, DICOM to submission, torch against onnxruntime.

Each runtime grades the folder in a fresh process (``spinepipe.grade.grade_folder``, the chain
of the predict-only workflow's rules), alternating runtimes over ``--repeat`` rounds. Prints,
per runtime (median over rounds): the fixed start-up cost (process start and imports, the
models read once) and the per-study cost split by stage, and how far the two runtimes'
submissions are apart.

    .venv/bin/python benchmarks/bench_predict.py --bundle results/bundle --data-dir results/synthetic

``--data-dir``: a folder with test_images/ and test_series_descriptions.csv (the synthetic
dataset's is one); ``--bundle``: a bundle folder (``results/bundle`` of a training run).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spinepipe.constants import RUNTIMES

FIXED_STAGES = ("load models",)  # read once per process, whatever the number of studies


def worker(bundle_dir: Path, data_dir: Path, runtime: str, threads: int, out: Path) -> None:
    """One grading in this process: stage seconds and the submission, as JSON on stdout."""
    start = time.perf_counter()
    from spinepipe.bundle.manifest import read_bundle
    from spinepipe.grade import StageTimes, grade_folder

    imports = time.perf_counter() - start
    bundle = read_bundle(bundle_dir)
    times = StageTimes()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as work:
        submission, degraded = grade_folder(bundle, data_dir, Path(work), runtime=runtime, threads=threads,
                                            times=times)
    submission.write_csv(out)
    studies = submission["row_id"].str.split("_").list.first().n_unique()
    print("RESULT=" + json.dumps({"imports": imports, "stages": times.seconds, "studies": studies,
                                  "degraded": degraded.height}))


def run_worker(args: argparse.Namespace, runtime: str, out: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--worker", runtime, "--bundle", str(args.bundle),
                             "--data-dir", str(args.data_dir), "--threads", str(args.threads),
                             "--out", str(out)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{runtime} worker failed:\n{result.stderr[-3000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT="))
    figures = json.loads(line[len("RESULT="):])
    per_study = sum(v for k, v in figures["stages"].items() if k not in FIXED_STAGES)
    # fixed: everything but the per-study stages (interpreter start, imports, model loading)
    return figures | {"wall": wall, "per_study_total": per_study / figures["studies"],
                      "fixed": wall - per_study}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        worker(args.bundle, args.data_dir, args.worker, args.threads, args.out)
        return
    import polars as pl

    runs: dict[str, list[dict]] = {r: [] for r in RUNTIMES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for runtime in RUNTIMES:
                runs[runtime].append(run_worker(args, runtime, Path(tmp) / f"{runtime}_{round_}.csv"))
        subs = {r: pl.read_csv(Path(tmp) / f"{r}_0.csv") for r in RUNTIMES}
    columns = ["normal_mild", "moderate", "severe"]
    diff = float(abs(subs["torch"].select(columns).to_numpy() - subs["onnx"].select(columns).to_numpy()).max())
    studies = runs["torch"][0]["studies"]
    print(f"bundle {args.bundle}, {studies} studies of {args.data_dir}, {args.threads} threads, "
          f"median of {args.repeat} rounds per runtime (each a fresh process)")
    stages = list(runs["torch"][0]["stages"])
    print(f"{'':28s}" + "".join(f"{r:>12s}" for r in RUNTIMES) + f"{'onnx/torch':>12s}")

    def row(label: str, values: dict[str, float], unit: str) -> None:
        ratio = values["onnx"] / values["torch"] if values["torch"] else float("nan")
        print(f"{label:28s}" + "".join(f"{values[r]:>10.3f} {unit}" for r in RUNTIMES) + f"{ratio:>12.2f}")

    median = {r: {k: statistics.median(run[k] for run in runs[r]) for k in ("wall", "fixed", "per_study_total")}
              for r in RUNTIMES}
    loading = {r: statistics.median(run["stages"]["load models"] for run in runs[r]) for r in RUNTIMES}
    row("fixed: start-up and imports", {r: median[r]["fixed"] - loading[r] for r in RUNTIMES}, "s")
    row("fixed: loading the models", loading, "s")
    row("fixed: total", {r: median[r]["fixed"] for r in RUNTIMES}, "s")
    for stage in stages:
        if stage not in FIXED_STAGES:
            row(f"per study: {stage}", {r: statistics.median(run["stages"][stage] for run in runs[r]) / studies
                                        for r in RUNTIMES}, "s")
    row("per study: total", {r: median[r]["per_study_total"] for r in RUNTIMES}, "s")
    row("wall, whole folder", {r: median[r]["wall"] for r in RUNTIMES}, "s")
    print(f"max |onnx - torch| over the submission's probabilities: {diff:.2e}")


if __name__ == "__main__":
    main()
