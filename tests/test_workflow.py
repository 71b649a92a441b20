"""The Snakemake workflow end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import REPO, TINY

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True,
                          text=True, timeout=900, cwd=workdir)


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's job stats table."""
    table = output.split("Job stats:")[-1] if "Job stats:" in output else ""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake(workdir, "--configfile", "tiny.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_pipeline_writes_dataset_and_reports(workflow_run):
    results = workflow_run / "results"
    for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
                 "test_series_descriptions.csv", "sample_submission.csv", "test_labels.csv",
                 "level_centers.csv"):
        assert (results / "synthetic" / name).is_file(), name
    summary = json.loads((results / "dataset" / "summary.json").read_text())
    assert summary["train_studies"] == TINY["synthetic"]["n_train"]
    assert summary["submission_rows"] == 25 * TINY["synthetic"]["n_test"]
    assert summary["train_series_folders_missing"] == 0
    learn = json.loads((results / "synthetic" / "learnability.json").read_text())
    assert {"model_score", "prior_score"} <= learn.keys()
    coordinates = pl.read_parquet(results / "localize" / "coordinates.parquet")
    test_ids = pl.read_csv(results / "synthetic" / "test_labels.csv")["study_id"].to_list()
    predicted = coordinates.filter(pl.col("study_id").is_in(test_ids))
    assert (predicted["source"] == "predicted").all() and predicted.height > 0
    assert set(coordinates["source"]) == {"annotated", "predicted"}
    localization = json.loads((results / "eval" / "localization.json").read_text())
    assert {"sagittal_t2", "sagittal_t1", "axial_t2"} <= localization["test"].keys()
    assert (results / "localize" / "label_noise.png").stat().st_size > 0
    assert (results / "mlflow.db").is_file()
    assert (workflow_run / "logs" / "synthesize" / "train_0000.log").is_file()
    assert (results / "benchmarks" / "synthesize" / "train_0000.tsv").is_file()


@pytest.mark.slow
def test_second_run_does_nothing(workflow_run):
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_adding_a_study_reruns_only_its_shard(workflow_run):
    grown = {"synthetic": {**TINY["synthetic"], "n_train": TINY["synthetic"]["n_train"] + 1}}
    (workflow_run / "grown.yaml").write_text(yaml.safe_dump(grown))
    result = snakemake(workflow_run, "--configfile", "grown.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    assert jobs.get("synthesize_shard") == 1, jobs
    assert "split=train, shard=0002" in result.stdout
    assert "shard=0000" not in result.stdout and "shard=0001" not in result.stdout


@pytest.mark.slow
def test_bad_config_fails_with_a_clear_message(tmp_path):
    result = snakemake(tmp_path, "--config", "synthetic={n_train: -1}", "--dry-run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "n_train" in output and "-1" in output
    result = snakemake(tmp_path, "--config", f"data_dir={tmp_path / 'absent'}", "--dry-run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "absent" in output and "does not exist" in output
