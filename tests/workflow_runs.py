"""Running the workflow from tests (not a test module): the snakemake command, the tiny run
that several test modules read, and what a dry run plans.

The tiny run (``build_tiny_run``) is the default target on the TINY config with two test
studies damaged after the dataset is rendered (one without its axial series, one with a
truncated Sagittal T1 file), so that the degraded paths are exercised. It is built once per
test session (conftest's ``tiny_run`` fixture); tests that only read it or dry-run against
it share it, tests that change it work in a copy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml
from conftest import REPO, TINY

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
# the target that renders the synthetic dataset (before the test studies are damaged)
DATASET_TARGET = "results/synthetic/test_series_descriptions.csv"


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True,
                          text=True, timeout=900, cwd=workdir)


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's job stats table."""
    table = output.split("Job stats:")[-1] if "Job stats:" in output else ""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE) if m.group(1) != "total"}


def study_folders(synthetic: Path, split: str, study: int) -> list[Path]:
    """A synthetic study's folders: in its shard (what the pipeline reads) and the hard links
    of <split>_images."""
    return [synthetic / f"{split}_images" / str(study),
            *synthetic.glob(f"shards/{split}_*/images/{study}")]


def damage_test_study(synthetic: Path) -> dict[str, int]:
    """Delete one test study's axial series and corrupt one Sagittal T1 file of another."""
    table = pl.read_csv(synthetic / "test_series_descriptions.csv")
    studies = sorted(table["study_id"].unique().to_list())
    axial = table.filter((pl.col("study_id") == studies[0]) & (pl.col("series_description") == "Axial T2"))
    for folder in study_folders(synthetic, "test", studies[0]):
        for series_id in axial["series_id"]:
            shutil.rmtree(folder / str(series_id))
    t1 = table.filter((pl.col("study_id") == studies[1]) & (pl.col("series_description") == "Sagittal T1"))
    # one inode behind both paths: truncating it damages the file wherever it is read
    victim = sorted((synthetic / "test_images" / str(studies[1]) / str(t1["series_id"][0])).glob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[:400])
    return {"no_axial": studies[0], "corrupt_t1": studies[1]}


def build_tiny_run(workdir: Path) -> dict[str, int]:
    """The tiny run in ``workdir`` (config ``tiny.yaml``); returns the damaged studies."""
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake(workdir, DATASET_TARGET, "--configfile", "tiny.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    damaged = damage_test_study(workdir / "results" / "synthetic")
    result = snakemake(workdir, "--configfile", "tiny.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return damaged
