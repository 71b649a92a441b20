"""Benchmark: Snakemake dry run (DAG build and job planning) for a large synthetic config.

Writes an overlay with --n-train / --n-test synthetic studies into an empty temporary
working directory and times `snakemake -n` of the default target there: nothing exists yet,
so every job of the full DAG is planned (the synthetic CSVs the header-parse shards read are
themselves workflow outputs). Prints the seconds per run, the job count and jobs per rule.

    .venv/bin/python benchmarks/bench_dryrun.py --n-train 2000 --n-test 200
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def job_stats(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[-1] if "Job stats:" in output else ""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (the median is printed)")
    parser.add_argument("--quiet", action="store_true",
                        help="pass --quiet rules (no per-job listing; job stats still printed)")
    args = parser.parse_args()

    overlay = {"synthetic": {"n_train": args.n_train, "n_test": args.n_test}}
    with tempfile.TemporaryDirectory(prefix="spinepipe-dryrun-") as tmp:
        workdir = Path(tmp)
        (workdir / "big.yaml").write_text(yaml.safe_dump(overlay))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--cores", "1", "--dry-run", "--configfile", "big.yaml"]
        if args.quiet:
            cmd += ["--quiet", "rules"]
        seconds, stats = [], {}
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
            seconds.append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(f"snakemake -n failed:\n{result.stderr[-3000:]}")
            stats = job_stats(result.stdout + result.stderr)
    total = stats.pop("total", sum(stats.values()))
    print(f"snakemake -n, n_train={args.n_train}, n_test={args.n_test}: "
          f"{statistics.median(seconds):.1f} s (runs: {', '.join(f'{s:.1f}' for s in seconds)}), "
          f"{total} jobs planned")
    for rule, count in stats.items():
        print(f"  {rule:<24} {count}")


if __name__ == "__main__":
    main()
