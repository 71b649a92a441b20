"""Where a run's time went: wall and CPU seconds per pipeline stage, summed over the jobs'
Snakemake benchmark files (results/benchmarks/**.tsv, and results/seeds/*/benchmarks/ with
``--seeds``). Prints a Markdown table.

    python benchmarks/stage_table.py RUN_DIR [--seeds]

RUN_DIR is a Snakemake working directory holding results/. ``job s`` is each job's wall time
(jobs running side by side both count), ``CPU s`` its CPU time (user + system, children
included), as Snakemake's benchmark directive measured them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

# first matching prefix (of the path under benchmarks/) names the stage
STAGES: list[tuple[str, str]] = [
    ("localize/train_", "localizer training"),
    ("train/parent_run", "severity training (run, priors)"),
    ("train/priors", "severity training (run, priors)"),
    ("train/", "severity training"),
    ("synthesize/", "synthetic data"),
    ("metadata/", "DICOM headers, cross-reference"),
    ("localize/stacks", "localizer stacks"),
    ("localize/", "localization"),
    ("crops/", "crops"),
    ("predict_oof/", "out-of-fold prediction"),
    ("predict/", "test prediction, submission"),
    ("submission", "test prediction, submission"),
    ("eval/", "evaluation"),
    ("qa/", "QA sheets, galleries"),
]


def stage_of(relative: str) -> str:
    return next((stage for prefix, stage in STAGES if relative.startswith(prefix)), "other")


def job_times(results: Path, seeds: bool = False) -> pl.DataFrame:
    """One row per benchmark file: stage, path, wall s, CPU s."""
    roots = [results / "benchmarks"]
    if seeds:
        roots += sorted((results / "seeds").glob("*/benchmarks"))
    rows = []
    for root in roots:
        for tsv in sorted(root.rglob("*.tsv")):
            table = pl.read_csv(tsv, separator="\t")
            # a rerun appends a line: the last one is the job that made the current output
            last = table.row(-1, named=True)
            relative = tsv.relative_to(root).as_posix()
            rows.append({"stage": stage_of(relative), "job": relative,
                         "wall_s": float(last["s"]), "cpu_s": float(last["cpu_time"])})
    if not rows:
        raise SystemExit(f"no benchmark files under {results / 'benchmarks'}")
    return pl.DataFrame(rows)


def stage_table(jobs: pl.DataFrame) -> pl.DataFrame:
    total_wall, total_cpu = jobs["wall_s"].sum(), jobs["cpu_s"].sum()
    return (jobs.group_by("stage")
            .agg(pl.len().alias("jobs"), pl.col("wall_s").sum(), pl.col("cpu_s").sum(),
                 pl.col("wall_s").max().alias("longest_job_s"))
            .with_columns((100 * pl.col("wall_s") / total_wall).alias("wall_share_pct"),
                          (100 * pl.col("cpu_s") / total_cpu).alias("cpu_share_pct"))
            .sort("cpu_s", descending=True))


def markdown(table: pl.DataFrame) -> str:
    lines = ["| stage | jobs | job s | share of job s | CPU s | share of CPU s | longest job s |",
             "|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['stage']} | {r['jobs']} | {r['wall_s']:.0f} | {r['wall_share_pct']:.0f}% | "
                     f"{r['cpu_s']:.0f} | {r['cpu_share_pct']:.0f}% | {r['longest_job_s']:.0f} |")
    lines.append(f"| **all** | {table['jobs'].sum()} | {table['wall_s'].sum():.0f} | 100% | "
                 f"{table['cpu_s'].sum():.0f} | 100% | {table['longest_job_s'].max():.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seeds", action="store_true", help="include results/seeds/*/benchmarks")
    args = parser.parse_args()
    print(markdown(stage_table(job_times(args.run_dir / "results", args.seeds))))


if __name__ == "__main__":
    main()
