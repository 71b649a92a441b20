"""The tiny pipeline through profiles/slurm on a real single-node Slurm cluster, tracking
to a PostgreSQL-backed MLflow tracking server (the set-up the README documents for clusters).

The fixtures install and start Slurm on localhost (tests/slurm_cluster.py), PostgreSQL
(tests/postgres_server.py) and ``mlflow server`` on it (tests/mlflow_server.py); the tests
are skipped only where that cannot be done (not root, no apt-get, the packages do not
install, or a system Slurm configuration in /etc/slurm that the job steps would read), and
in CI (``CI=true``) they fail instead of skipping.

The run is the smallest DAG that still sends every rule of the default target through
Slurm: the tiny config with one shard per split for every sharded stage (SLURM_OVERLAY).
Like the shared tiny run (tests/workflow_runs.py), it renders the dataset first, damages two
test studies, then runs the rest, so that its outputs can be compared with that run's. It
uses the profile as it is, except what the command line gives: a config overlay pointing
``mlflow.tracking_uri`` at the server, every rule's ``mem_mb`` capped at half the node's
memory (the tiny data needs far less) so that any two jobs fit side by side, and a first
status check after 1 s instead of the profile's 10 s (a test cluster answers at once). The
expected jobs come from dry runs of the same commands.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import mlflow_server
import numpy as np
import polars as pl
import postgres_server
import pytest
import slurm_cluster
import yaml
from conftest import REPO, TINY
from system_packages import unavailable
from workflow_runs import DATASET_TARGET, damage_test_study, planned_jobs

from spinepipe.synth.layout import SPLIT_CSVS, TRUTH_CSVS

PROFILE = REPO / "profiles" / "slurm"
# Rules of the default target that snakemake runs itself, not as Slurm jobs.
LOCAL_RULES = {"all"}
TRAINING_RULES = ("train_localizer", "train_model")
# One shard per split for every sharded stage: each rule still runs, in the fewest jobs.
SLURM_OVERLAY = {"metadata": {"shards": 1}, "crops": {"shards": 1}, "qa": {"shards": 1}}
FAST_STATUS_CHECKS = ["--slurm-init-seconds-before-status-checks", "1"]
RUN_LIMIT_S = 1200
# job id, state, comment (rule), start and end time, CPUs, memory asked for
SQUEUE_FORMAT = "%i|%T|%k|%S|%e|%C|%m"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = slurm_cluster.start_cluster(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.SlurmUnavailable as reason:
        unavailable("Slurm", reason)
    yield cluster
    cluster.stop()


def tiny_workdir(tmp_path_factory, name: str) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    workdir.chmod(0o755)
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (workdir / "slurm.yaml").write_text(yaml.safe_dump(SLURM_OVERLAY))
    return workdir


@pytest.fixture(scope="module")
def tracking_server(slurm, tmp_path_factory):
    """``mlflow server`` on a PostgreSQL database, both started here (after Slurm, so that a
    machine without Slurm skips before installing PostgreSQL)."""
    try:
        database = postgres_server.start_postgres()
    except postgres_server.PostgresUnavailable as reason:
        unavailable("PostgreSQL", reason)
    try:
        server = mlflow_server.start_mlflow_server(database.uri, tmp_path_factory.mktemp("mlflow"))
    except BaseException:
        database.stop()
        raise
    print(f"PostgreSQL up in {database.startup_s:.1f} s, mlflow server answering in "
          f"{server.startup_s:.1f} s (first start: schema migration included)")
    yield server
    server.stop()
    database.stop()


def _capped_resources(max_mem_mb: int) -> list[str]:
    """The profile's set-resources with every mem_mb capped at ``max_mem_mb``, as command-line
    values (given on the command line, set-resources replaces the profile's whole table)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return [f"{rule}:{name}={min(int(value), max_mem_mb) if name == 'mem_mb' else value}"
            for rule, resources in profile.get("set-resources", {}).items()
            for name, value in resources.items()]


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # "N/A", "Unknown"
        return None


def _memory_mb(text: str) -> int:
    """squeue's %m ("2000M", "16G", "1T") in MB."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _jobs(squeue: str) -> list[dict]:
    jobs = []
    for line in squeue.splitlines():
        if line.strip():
            job_id, state, comment, start, end, cpus, memory = line.split("|")
            jobs.append({"id": job_id, "state": state, "comment": comment,
                         "rule": comment.removeprefix("rule_").split("_wildcards_")[0],
                         "start": _time(start), "end": _time(end), "cpus": int(cpus),
                         "memory_mb": _memory_mb(memory)})
    return jobs


def _snakemake_on_slurm(slurm, workdir: Path, targets: list[str], args: list[str],
                        server) -> tuple[Counter, subprocess.CompletedProcess]:
    """A dry run (the jobs it plans, without the local ``all``), then the real run. The
    targets come first: options such as --set-resources take every word after them."""
    args = [*targets, *args]
    dry = subprocess.run([sys.executable, "-m", "snakemake", *args, "--dry-run"],
                         capture_output=True, text=True, cwd=workdir, env=slurm.env, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = Counter({rule: n for rule, n in planned_jobs(dry.stdout).items()
                       if rule not in LOCAL_RULES})
    # A status query that never returns (sacct without slurmdbd) makes snakemake ignore
    # SIGTERM, hence SIGKILL; the job and its children share the timeout's process group.
    cmd = ["timeout", "-s", "KILL", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=slurm.env,
                            timeout=RUN_LIMIT_S + 30)
    if result.returncode != 0:
        squeue = slurm.run("squeue", "--states=all", "--noheader",
                           f"--format={SQUEUE_FORMAT}").stdout
        failed_logs = "\n".join(
            f"--- {log} ---\n{log.read_text()[-1500:]}"
            for log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")))
        pytest.fail(f"snakemake --profile slurm failed (rc {result.returncode}):\n"
                    f"{result.stderr[-4000:]}\nsqueue:\n{squeue}\n{failed_logs}\n{slurm.logs()}\n"
                    f"--- mlflow server ---\n{server.logs()}")
    return planned, result


@pytest.fixture(scope="module")
def slurm_run(slurm, tracking_server, tmp_path_factory):
    """The tiny pipeline on Slurm in two runs, as the shared tiny run: the dataset, two test
    studies damaged, then the default target."""
    workdir = tiny_workdir(tmp_path_factory, "on_slurm")
    (workdir / "tracking.yaml").write_text(
        yaml.safe_dump({"mlflow": {"tracking_uri": tracking_server.uri}}))
    args = ["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(PROFILE),
            "--slurm-keep-successful-logs", *FAST_STATUS_CHECKS,
            "--configfile", "tiny.yaml", "slurm.yaml", "tracking.yaml",
            "--set-resources", *_capped_resources(slurm.memory_mb // 2)]
    started = time.monotonic()
    planned, dataset = _snakemake_on_slurm(slurm, workdir, [DATASET_TARGET], args, tracking_server)
    damaged = damage_test_study(workdir / "results" / "synthetic")
    rest, result = _snakemake_on_slurm(slurm, workdir, [], args, tracking_server)
    seconds = time.monotonic() - started
    squeue = slurm.run("squeue", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}").stdout
    print(f"snakemake --profile slurm: {sum((planned + rest).values())} jobs in {seconds:.0f} s")
    return {"workdir": workdir, "output": "".join(r.stdout + r.stderr for r in (dataset, result)),
            "squeue": squeue, "jobs": _jobs(squeue), "planned": planned + rest,
            "damaged": damaged, "seconds": seconds, "server": tracking_server}


@pytest.mark.slow
def test_pipeline_runs_as_slurm_jobs(slurm_run):
    workdir, output, squeue = slurm_run["workdir"], slurm_run["output"], slurm_run["squeue"]
    jobs = slurm_run["jobs"]
    # Every job of the DAG went through sbatch and completed.
    assert {job["state"] for job in jobs} == {"COMPLETED"}, squeue
    rules = Counter(job["rule"] for job in jobs)
    assert rules == slurm_run["planned"], squeue
    # every rule of the default target but `all` (the local one), one job per split for each
    # sharded per-study stage
    for rule in ("synthesize_shard", "instances_shard", "localizer_stacks", "localize"):
        assert rules[rule] == 2, (rule, squeue)
    assert rules["train_model"] == 3 * TINY["folds"]["n"], squeue
    assert output.count("has been submitted with SLURM jobid") == len(jobs), output[-3000:]
    # The executor's per-job logs (kept with --slurm-keep-successful-logs).
    logdir = workdir / ".snakemake" / "slurm_logs"
    assert {p.name.removeprefix("rule_") for p in logdir.iterdir()} == set(rules)
    assert len(list(logdir.rglob("*.log"))) == len(jobs)
    # The rules' own logs were written by the jobs on the node: the one train shard's names
    # every train study it rendered.
    from conftest import make_config

    from spinepipe.synth.layout import study_ids

    log = (workdir / "logs" / "synthesize" / "train_0000.log").read_text()
    ids = study_ids(make_config()["seed"], "train", TINY["synthetic"]["n_train"])
    for index, study_id in enumerate(ids):
        assert f"train study {study_id} (index {index}) written" in log, log[-2000:]


@pytest.mark.slow
def test_training_jobs_fit_side_by_side(slurm_run, slurm):
    """The profile (with mem_mb capped at half the node) asks little enough for two jobs of
    each training rule to run on the node at once, so their writes to the tracking server
    can come in parallel. Whether they did overlap is up to the scheduler: printed only."""
    for rule in TRAINING_RULES:
        jobs = [job for job in slurm_run["jobs"] if job["rule"] == rule]
        assert len(jobs) >= 2, slurm_run["squeue"]
        for job in jobs:
            assert 2 * job["cpus"] <= slurm.cpus, (rule, job, slurm.cpus)
            assert 2 * job["memory_mb"] <= slurm.memory_mb, (rule, job, slurm.memory_mb)
        spans = [(job["start"], job["end"]) for job in jobs if job["start"] and job["end"]]
        most = max((sum(1 for start, end in spans if start <= moment < end)
                    for moment, _ in spans), default=0)
        print(f"{rule}: {len(jobs)} jobs, at most {most} at once")


def _models(folder: Path) -> set[str]:
    return {path.stem for path in folder.glob("*.pt")}


def _assert_history(client, run, record_by_step: dict[int, dict], where: str) -> None:
    """Every finite value of the per-epoch records is the run's metric at that step, and
    each metric has one entry per epoch (no lost and no duplicated writes)."""
    keys = {key for record in record_by_step.values() for key, value in record.items()
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value)}
    assert keys, where
    for key in keys:
        history = client.get_metric_history(run.info.run_id, key)
        expected = {step: float(record[key]) for step, record in record_by_step.items()
                    if isinstance(record.get(key), (int, float)) and math.isfinite(record[key])}
        assert sorted(m.step for m in history) == sorted(expected), f"{where} {key}: {history}"
        for metric in history:
            assert metric.value == pytest.approx(expected[metric.step], rel=1e-6, abs=1e-9), \
                f"{where} {key} step {metric.step}"


@pytest.fixture(scope="module")
def tracked(slurm_run):
    from conftest import make_config
    from mlflow import MlflowClient

    client = MlflowClient(slurm_run["server"].uri)
    name = make_config()["mlflow"]["experiment"]
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} on {slurm_run['server'].uri}"
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return client, runs


@pytest.mark.slow
def test_every_training_run_and_metric_reached_the_tracking_server(slurm_run, tracked):
    """One FINISHED run per model file, with the full per-epoch metric history, written in
    parallel by the Slurm jobs through the PostgreSQL-backed server. Runs are matched by
    their tags (stage, kind/task/fold, family/fold), not by their names."""
    from spinepipe import checkpoints

    client, runs = tracked
    results = slurm_run["workdir"] / "results"
    # no job gave up on the store (tracking is best effort: a lost write is only a warning)
    warnings = [f"{log}: {line}" for log in (slurm_run["workdir"] / "logs").rglob("*.log")
                for line in log.read_text(errors="replace").splitlines() if "not tracked" in line]
    assert not warnings, "\n".join(warnings[:20])

    localizers = [run for run in runs
                  if run.data.tags.get("stage") == "localize" and "kind" in run.data.tags]
    keys = Counter(f"{r.data.tags['kind']}_{r.data.tags['task']}_fold{r.data.tags['fold']}"
                   for r in localizers)
    models = _models(results / "localize" / "models")
    assert models and keys == Counter(models), (sorted(keys.elements()), sorted(models))
    localize_cfg = TINY["localize"]
    for run in localizers:
        tags = run.data.tags
        where = f"localizer run {run.info.run_name}"
        assert run.info.status == "FINISHED", where
        meta = checkpoints.load(results / "localize" / "models" /
                                f"{tags['kind']}_{tags['task']}_fold{tags['fold']}.pt")["meta"]
        epochs = localize_cfg[f"{tags['kind']}_model"]["epochs"]
        # the model file holds the last epoch's figures: one entry per epoch of each
        for key, value in meta["metrics"].items():
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                continue
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(epochs)), f"{where} {key}"
            last = next(m for m in history if m.step == epochs - 1)
            assert last.value == pytest.approx(value, rel=1e-6, abs=1e-9), f"{where} {key}"

    severity = [run for run in runs
                if run.data.tags.get("stage") == "train" and "family" in run.data.tags]
    keys = Counter(f"{r.data.tags['family']}_fold{r.data.tags['fold']}" for r in severity)
    models = _models(results / "train" / "models")
    assert len(models) == 3 * TINY["folds"]["n"], models
    assert keys == Counter(models), (sorted(keys.elements()), sorted(models))
    parent_id = json.loads((results / "train" / "parent_run.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    for run in severity:
        tags = run.data.tags
        where = f"severity run {run.info.run_name}"
        assert run.info.status == "FINISHED", where
        assert tags.get("mlflow.parentRunId") == parent_id, where
        meta = checkpoints.load(results / "train" / "models" /
                                f"{tags['family']}_fold{tags['fold']}.pt")["meta"]
        history = meta["history"]
        assert [record["epoch"] for record in history] == list(range(TINY["train"]["epochs"]))
        _assert_history(client, run, {record["epoch"]: record for record in history}, where)
        assert run.data.metrics["best_epoch"] == meta["best_epoch"], where

    # artifacts went through the server (proxied, mlflow-artifacts:/) to its own folder
    tracked = json.loads((results / "qa" / "mlflow.json").read_text())
    for artifact_path, names in tracked["artifacts"].items():
        assert names, artifact_path
        listed = {Path(item.path).name
                  for item in client.list_artifacts(tracked["run_id"], artifact_path)}
        assert listed == set(names), artifact_path
    print(f"{len(runs)} runs in the experiment: {len(localizers)} localizer and "
          f"{len(severity)} severity training runs checked")


def _without_paths(value):
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()
                if not any(word in k for word in ("path", "dir"))}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


@pytest.mark.slow
def test_slurm_outputs_match_a_local_run(slurm_run, tiny_run):
    """The same data, models and grades as the shared local run (two shards per stage where
    this run had one: sharding changes nothing either)."""
    local_dir, damaged = tiny_run
    assert slurm_run["damaged"] == damaged
    on_slurm = slurm_run["workdir"] / "results"
    local = local_dir / "results"
    csvs = sorted(p.name for p in (local / "synthetic").glob("*.csv"))
    assert csvs == sorted([*SPLIT_CSVS["train"], *SPLIT_CSVS["test"], *TRUTH_CSVS])
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
    coordinates = [pl.read_parquet(root / "localize" / "coordinates.parquet").sort(
        "study_id", "condition", "level") for root in (on_slurm, local)]
    assert coordinates[0].select("study_id", "condition", "level", "instance_number").equals(
        coordinates[1].select("study_id", "condition", "level", "instance_number"))
    assert np.allclose(coordinates[0].select("x", "y").to_numpy(),
                       coordinates[1].select("x", "y").to_numpy(), atol=1e-3)
    submissions = [pl.read_csv(root / "submission.csv") for root in (on_slurm, local)]
    assert submissions[0]["row_id"].to_list() == submissions[1]["row_id"].to_list()
    assert np.allclose(submissions[0].select("normal_mild", "moderate", "severe").to_numpy(),
                       submissions[1].select("normal_mild", "moderate", "severe").to_numpy(), atol=1e-4)
    degraded = [pl.read_csv(root / "eval" / "degraded_rows.csv").sort("row_id")
                for root in (on_slurm, local)]
    assert degraded[0].height > 0 and degraded[0].equals(degraded[1])
    cv = [json.loads((root / "eval" / "cv.json").read_text()) for root in (on_slurm, local)]
    assert abs(cv[0]["cv_score"] - cv[1]["cv_score"]) < 1e-4
