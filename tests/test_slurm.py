"""The tiny pipeline through profiles/slurm on a real single-node Slurm cluster.

The fixture installs and starts Slurm on localhost (tests/slurm_cluster.py); the test is
skipped only where that cannot be done (not root, no apt-get, the packages do not install,
or a system Slurm configuration in /etc/slurm that the job steps would read).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

import slurm_cluster
from conftest import REPO, TINY
from test_workflow import snakemake as run_local

PROFILE = REPO / "profiles" / "slurm"
# Every rule of the default target (the whole tiny pipeline, training and submission
# included) runs as a Slurm job.
SLURM_RULES = {"synthesize_shard", "synthesize", "dataset_summary", "synthetic_learnability",
               "instances_shard", "metadata", "axial_xref", "geometry_eval", "tracking_init",
               "folds", "localizer_stacks", "train_localizer", "localize", "coordinates",
               "localize_eval", "crops_shard", "crops_index", "train_parent_run", "train_model",
               "predict_oof", "cv_eval", "predict_test", "submission", "cv_report"}
RUN_LIMIT_S = 1200


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = slurm_cluster.start_cluster(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.SlurmUnavailable as reason:
        pytest.skip(f"no Slurm on this machine: {reason}")
    yield cluster
    cluster.stop()


def tiny_workdir(tmp_path_factory, name: str) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    workdir.chmod(0o755)
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return workdir


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tiny_workdir(tmp_path_factory, "local")
    result = run_local(workdir, "--configfile", "tiny.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    workdir = tiny_workdir(tmp_path_factory, "on_slurm")
    # A status query that never returns (sacct without slurmdbd) makes snakemake ignore
    # SIGTERM, hence SIGKILL; the job and its children share the timeout's process group.
    cmd = ["timeout", "-s", "KILL", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake",
           "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(PROFILE),
           "--slurm-keep-successful-logs", "--configfile", "tiny.yaml"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=slurm.env,
                            timeout=RUN_LIMIT_S + 30)
    jobs = slurm.run("squeue", "--states=all", "--noheader", "--format=%i|%T|%k").stdout
    if result.returncode != 0:
        failed_logs = "\n".join(
            f"--- {log} ---\n{log.read_text()[-1500:]}"
            for log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")))
        pytest.fail(f"snakemake --profile slurm failed (rc {result.returncode}):\n"
                    f"{result.stderr[-4000:]}\nsqueue:\n{jobs}\n{failed_logs}\n{slurm.logs()}")
    return workdir, result, jobs


@pytest.mark.slow
def test_pipeline_runs_as_slurm_jobs(slurm_run):
    workdir, result, squeue = slurm_run
    rows = [line.split("|") for line in squeue.splitlines() if line.strip()]
    # Every job of the DAG went through sbatch and completed.
    states = {state for _, state, _ in rows}
    assert states == {"COMPLETED"}, squeue
    rules = [comment.removeprefix("rule_").split("_wildcards_")[0] for _, _, comment in rows]
    assert set(rules) == SLURM_RULES, squeue
    assert rules.count("synthesize_shard") == 3 and rules.count("instances_shard") == 8, squeue
    assert rules.count("train_model") == 3 * TINY["folds"]["n"], squeue
    output = result.stdout + result.stderr
    assert output.count("has been submitted with SLURM jobid") == len(rows), output[-3000:]
    # The executor's per-job logs (kept with --slurm-keep-successful-logs).
    logdir = workdir / ".snakemake" / "slurm_logs"
    assert {p.name.removeprefix("rule_") for p in logdir.iterdir()} == SLURM_RULES
    assert len(list(logdir.rglob("*.log"))) == len(rows)
    # The rules' own logs were written by the jobs on the node.
    assert (workdir / "logs" / "eval" / "geometry.log").is_file()


def _without_paths(value):
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()
                if not any(word in k for word in ("path", "dir"))}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


@pytest.mark.slow
def test_slurm_outputs_match_a_local_run(slurm_run, local_run):
    on_slurm = slurm_run[0] / "results"
    local = local_run / "results"
    csvs = sorted(p.name for p in (local / "synthetic").glob("*.csv"))
    assert len(csvs) == 8
    assert sorted(p.name for p in (on_slurm / "synthetic").glob("*.csv")) == csvs
    for name in csvs:
        assert (on_slurm / "synthetic" / name).read_bytes() == \
            (local / "synthetic" / name).read_bytes(), name
    summary = [json.loads((root / "dataset" / "summary.json").read_text())
               for root in (on_slurm, local)]
    assert _without_paths(summary[0]) == _without_paths(summary[1])
    geometry = [json.loads((root / "eval" / "geometry.json").read_text())
                for root in (on_slurm, local)]
    assert geometry[0] == geometry[1]
    # training ran with the same seeds and thread counts: the same models and predictions
    coordinates = [pl.read_parquet(root / "localize" / "coordinates.parquet") for root in (on_slurm, local)]
    assert coordinates[0].select("study_id", "condition", "level", "instance_number").equals(
        coordinates[1].select("study_id", "condition", "level", "instance_number"))
    assert np.allclose(coordinates[0].select("x", "y").to_numpy(),
                       coordinates[1].select("x", "y").to_numpy(), atol=1e-3)
    submissions = [pl.read_csv(root / "submission.csv") for root in (on_slurm, local)]
    assert submissions[0]["row_id"].to_list() == submissions[1]["row_id"].to_list()
    assert np.allclose(submissions[0].select("normal_mild", "moderate", "severe").to_numpy(),
                       submissions[1].select("normal_mild", "moderate", "severe").to_numpy(), atol=1e-4)
    cv = [json.loads((root / "eval" / "cv.json").read_text()) for root in (on_slurm, local)]
    assert abs(cv[0]["cv_score"] - cv[1]["cv_score"]) < 1e-4
