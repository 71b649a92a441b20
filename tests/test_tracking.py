"""Tracking never loses training: writes to a locked store are retried until it frees up,
an unreachable store fails tracking_init at once (naming it) while training only warns,
and each epoch's checkpoint is on disk before its figures go to the store."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_config

from spinepipe.classify.data import CropDataset, Sample
from spinepipe.classify.fold_model import build_model
from spinepipe.classify.training import fit
from spinepipe.constants import LEVELS
from spinepipe.tracking.runs import RunLogger, mlflow_run
from spinepipe.tracking.store import TrackingError, init_tracking

LOCK_SECONDS = 4.0
BUSY_TIMEOUT_MS = 1000


def _mlflow(**overrides) -> dict:
    """The config's ``mlflow`` section (config.yaml, every key the schema requires) with
    ``overrides``."""
    return make_config({"mlflow": overrides})["mlflow"]


@pytest.fixture
def short_sqlite_busy_timeout(monkeypatch):
    """MLflow waits up to 20 s (PRAGMA busy_timeout) for a locked SQLite store before it
    raises "database is locked"; lower that wait to 1 s so a lock of a few seconds shows
    the error parallel jobs see, and the test takes seconds."""
    import sqlalchemy
    from mlflow.store.db import utils

    seen = []

    class ShortBusyTimeout:
        def __getattr__(self, name):
            return getattr(sqlalchemy.sql, name)

        @staticmethod
        def text(statement, *args, **kwargs):
            if "busy_timeout" in statement:
                seen.append(statement)
                statement = f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};"
            return sqlalchemy.sql.text(statement, *args, **kwargs)

    monkeypatch.setattr(utils, "sql", ShortBusyTimeout())
    return seen


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_reach_a_store_locked_by_another_connection(tmp_path, short_sqlite_busy_timeout,
                                                             caplog):
    db = tmp_path / "mlflow.db"
    tracking = _mlflow(tracking_uri=f"sqlite:///{db}", experiment="locked", retry_attempts=8,
                       retry_seconds=10)
    experiment_id = init_tracking(tracking)
    with mlflow_run(tracking, "run", {"a": 1}) as log_metrics:
        holder = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another job in the middle of a write
        release = threading.Timer(LOCK_SECONDS, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            with caplog.at_level(logging.WARNING, logger="spinepipe.tracking"):
                log_metrics({"val_loss": 0.5}, 3)
        finally:
            release.join()
            holder.close()
    assert short_sqlite_busy_timeout, "MLflow's busy timeout was not shortened: the test proves nothing"
    # the write met the lock ("database is locked") and was retried until the lock was gone
    retries = [r.getMessage() for r in caplog.records if "try " in r.getMessage()]
    assert retries and all("locked" in m for m in retries), retries
    assert not [r for r in caplog.records if "not tracked" in r.getMessage()]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5)]
    assert run.info.status == "FINISHED"


@pytest.fixture
def store_calls(monkeypatch) -> dict[str, list]:
    """What tracking did: MLflow client calls that set up the experiment, and the waits
    between retries (recorded, not slept)."""
    from spinepipe.tracking import retry, store

    calls: dict[str, list] = {"experiment": [], "sleep": []}
    real = store.experiment_id

    def experiment_id(*args, **kwargs):
        calls["experiment"].append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "experiment_id", experiment_id)  # what init_tracking calls
    clock = SimpleNamespace(monotonic=time.monotonic, time=time.time,
                            sleep=lambda seconds: calls["sleep"].append(seconds))
    monkeypatch.setattr(retry, "time", clock)  # the retries' clock only, not the process's
    return calls


def test_unreachable_store_fails_tracking_init_at_once(store_calls):
    """Refused by the reachability check, before any MLflow call and without a retry."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingError, match=f"{uri} is not reachable"):
        init_tracking(_mlflow(tracking_uri=uri, experiment="x", request_timeout_s=2,
                              retry_attempts=5, retry_seconds=60))
    assert store_calls == {"experiment": [], "sleep": []}


def test_unusable_sqlite_store_fails_tracking_init_at_once(tmp_path, store_calls):
    (tmp_path / "folder.db").mkdir()
    uri = f"sqlite:///{tmp_path / 'folder.db'}"
    with pytest.raises(TrackingError, match="folder.db' is not a file"):
        init_tracking(_mlflow(tracking_uri=uri, experiment="x", retry_attempts=5,
                              retry_seconds=60))
    assert store_calls == {"experiment": [], "sleep": []}


def test_metric_logging_to_a_dead_store_warns_and_goes_on(monkeypatch, caplog, store_calls):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    uri = f"http://127.0.0.1:{_closed_port()}"
    # the waits are recorded, not slept (store_calls): a budget far above any call's time
    logger = RunLogger(_mlflow(tracking_uri=uri, experiment="x", retry_attempts=3,
                               retry_seconds=60, request_timeout_s=2), run_id="0" * 32)
    with caplog.at_level(logging.WARNING, logger="spinepipe.tracking"):
        logger({"train_loss": 1.0}, 0)  # retried, then given up with a warning
        logger({"train_loss": 0.9}, 1)  # a store that failed is tried once per call
        logger.log_artifact(__file__)
        logger.terminate("FINISHED")
    given_up = [r.getMessage() for r in caplog.records if "is not tracked" in r.getMessage()]
    assert len(given_up) == 4 and all(uri in m for m in given_up)
    retries = [r for r in caplog.records if "try 2 of 3" in r.getMessage()]
    assert len(retries) == 1  # only the first call used the whole retry budget
    # its two waits double and stay within retry_seconds; the other calls never wait
    assert store_calls["sleep"] == pytest.approx([20.0, 40.0]), store_calls["sleep"]


def _tiny_samples(tmp_path, n: int = 8) -> tuple[list[Sample], dict]:
    """Spinal samples over a small random crop array (no DICOM, no dataset)."""
    crops = {"size": 32, "margin": 0, "slices": 0, "extra_slices": 0}
    array = tmp_path / "crops.npy"
    np.save(array, np.random.default_rng(0).random((2 * n, 1, 32, 32), dtype=np.float32))
    samples = [Sample(study_id=i, level=LEVELS[i % 5], side="center",
                      row_ids=[f"{i}_spinal_canal_stenosis_{LEVELS[i % 5]}"],
                      crops=[(str(array), 2 * i), (str(array), 2 * i + 1)],
                      masks=[[True], [True]], statuses=["ok", "ok"],
                      target=np.array([i % 3], dtype=np.int64)) for i in range(n)]
    return samples, crops


def test_each_epoch_is_checkpointed_before_its_metrics_are_logged(tmp_path):
    samples, crops = _tiny_samples(tmp_path)
    cfg = {"backbone": "resnet10t", "weights": "", "head": "meanmax", "hidden": 8, "dropout": 0.0,
           "aux_weight": 0.0, "epochs": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0,
           "warmup_epochs": 0, "grad_clip": 1.0, "class_weights": [1.0, 2.0, 4.0],
           "select_by": "loss", "num_workers": 0, "pin_memory": False, "prefetch_factor": 2,
           "precision": "fp32", "channels_last": False, "ema_decay": 0.0}
    checkpoint = tmp_path / "ckpt" / "spinal_fold0.last.pt"
    seen = []

    def log_metrics(metrics, epoch):
        assert checkpoint.is_file(), f"epoch {epoch}: metrics logged before the checkpoint"
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert saved["epoch"] == epoch and len(saved["history"]) == epoch + 1
        seen.append(epoch)

    data = crops | {"slice_jitter": 0, "point_jitter": 0}
    fit(build_model("spinal", crops, cfg), CropDataset(samples, data, train=True),
        CropDataset(samples, data, train=False), cfg, device=torch.device("cpu"), seed=0,
        checkpoint=checkpoint, fingerprint="f", log_metrics=log_metrics)
    assert seen == [0, 1]


def test_runs_nest_under_the_root_run_and_name_their_rule(tmp_path, monkeypatch):
    """workflow_context: runs created after it name the rule as their source, carry the git
    commit and the dataset inputs, and nest under their configuration's root run (one per
    config, created on first use, already terminated) unless given a parent. A parent run is
    closed by the job that creates it, before any child exists."""
    import json

    import mlflow

    from spinepipe.tracking import context
    from spinepipe.tracking.context import config_hash, workflow_context
    from spinepipe.tracking.runs import create_parent_run

    monkeypatch.chdir(tmp_path)
    cfg = _mlflow(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="spinepipe",
                  retry_attempts=2, retry_seconds=1.0)
    init_tracking(cfg)
    monkeypatch.setattr(context, "git_commit", lambda repo=None: "a" * 40)
    config = {"seed": 1, "mlflow": cfg}
    records = {"train": {"name": "synthetic:train", "digest": "0123456789abcdef", "source": str(tmp_path),
                         "split": "train", "profile": {"studies": 4, "series": 12, "files": 300}}}
    (tmp_path / "datasets.json").write_text(json.dumps(records))
    workflow_context("train_localizer", config, tmp_path / "datasets.json", {"train": "training"})
    with mlflow_run(cfg, "localize/point/sagittal_t1/fold0", {"fold": 0}) as logger:
        child = logger.run_id
    workflow_context("train_parent_run", config)
    parent = create_parent_run(cfg, "train/seed1", {"train": {"lr": 0.01}, "seed": 1})
    client = mlflow.MlflowClient(cfg["tracking_uri"])
    closed = client.get_run(parent)
    assert closed.info.status == "FINISHED" and closed.data.params == {"train.lr": "0.01", "seed": "1"}
    workflow_context("train_model", config)
    with mlflow_run(cfg, "train/seed1/spinal/fold0", {}, parent_run_id=parent) as logger:
        grandchild = logger.run_id
        assert client.get_run(grandchild).info.status == "RUNNING"
    experiment = client.get_experiment_by_name("spinepipe").experiment_id
    roots = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in roots] == ["pipeline"]
    root = roots[0].info.run_id
    runs = {run_id: client.get_run(run_id) for run_id in (root, child, parent, grandchild)}
    tags = {run_id: run.data.tags for run_id, run in runs.items()}
    assert tags[root]["spinepipe.config_hash"] == config_hash(config)
    assert all(run.info.status == "FINISHED" for run in runs.values())
    # the root is a container created terminated; a parent ends before its child starts
    assert runs[root].info.end_time == runs[root].info.start_time <= runs[child].info.start_time
    assert runs[parent].info.end_time <= runs[grandchild].info.start_time
    assert tags[child]["mlflow.parentRunId"] == root and tags[parent]["mlflow.parentRunId"] == root
    assert tags[grandchild]["mlflow.parentRunId"] == parent
    assert tags[child]["mlflow.source.name"] == "snakemake rule train_localizer"
    assert tags[root]["snakemake.rule"] == "train_localizer"  # the job that needed it first
    assert tags[parent]["snakemake.rule"] == "train_parent_run"
    assert tags[grandchild]["snakemake.rule"] == "train_model"
    assert all(t["mlflow.source.git.commit"] == "a" * 40 and t["mlflow.source.type"] == "JOB"
               for t in tags.values())
    (dataset_input,) = client.get_run(child).inputs.dataset_inputs
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("synthetic:train", "0123456789abcdef")
    assert json.loads(dataset_input.dataset.profile) == {"studies": 4, "series": 12, "files": 300}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    # another configuration: its own root
    workflow_context("train_localizer", {**config, "seed": 2})
    with mlflow_run(cfg, "localize/point/sagittal_t1/fold0", {}) as logger:
        other = client.get_run(logger.run_id).data.tags["mlflow.parentRunId"]
    assert other != root and client.get_run(other).data.tags["spinepipe.config_hash"] == config_hash(
        {**config, "seed": 2})
    workflow_context("other")  # no config: a run of its own, the source still named
    with mlflow_run(cfg, "loose", {}) as logger:
        assert "mlflow.parentRunId" not in client.get_run(logger.run_id).data.tags
    workflow_context(None)


def test_a_failed_block_closes_its_run_as_failed(tmp_path):
    import mlflow

    cfg = _mlflow(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="x",
                  retry_attempts=2, retry_seconds=1.0)
    init_tracking(cfg)
    with pytest.raises(ValueError), mlflow_run(cfg, "broken", {}) as logger:
        raise ValueError("training failed")
    run = mlflow.MlflowClient(cfg["tracking_uri"]).get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.info.end_time is not None


SIGTERMED_JOB = r"""
import json, os, signal, sys, time
from spinepipe.tracking.runs import mlflow_run
cfg = json.loads(sys.argv[1])
with mlflow_run(cfg, "killed", {}) as logger:
    print(logger.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # what Slurm sends at the time limit
    time.sleep(30)
print("not reached", flush=True)
"""


def test_a_job_sent_sigterm_closes_its_run_as_failed(tmp_path):
    """Slurm's time limit, scancel or a cancelled workflow: the job still closes its run
    (FAILED) before it exits, and exits with 143 as it would have without tracking."""
    import json
    import subprocess
    import sys

    import mlflow

    cfg = _mlflow(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="x")
    init_tracking(cfg)
    job_cfg = {**cfg, "retry_attempts": 2, "retry_seconds": 1.0}
    result = subprocess.run([sys.executable, "-c", SIGTERMED_JOB, json.dumps(job_cfg)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            check=False)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "not reached" not in result.stdout
    run = mlflow.MlflowClient(cfg["tracking_uri"]).get_run(result.stdout.split()[0])
    assert run.info.status == "FAILED" and run.info.end_time is not None


def test_retried_creations_leave_one_run_each_all_terminated(tmp_path, monkeypatch):
    """A store that takes a write and then loses the answer (a timed-out HTTP response):
    the retry finds the run or root created by the first try instead of creating a second
    one that nobody would ever close."""
    import mlflow

    from spinepipe.tracking.context import workflow_context
    from spinepipe.tracking.election import forget_root_runs
    from spinepipe.tracking.runs import create_parent_run

    monkeypatch.chdir(tmp_path)
    cfg = _mlflow(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="spinepipe",
                  retry_attempts=4, retry_seconds=3.0)
    init_tracking(cfg)
    lost = []

    def answer_lost(name):
        real = getattr(mlflow.MlflowClient, name)

        def call(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            if name not in lost:
                lost.append(name)
                raise ConnectionResetError(f"{name}: connection reset by peer")
            return result
        monkeypatch.setattr(mlflow.MlflowClient, name, call)

    answer_lost("create_run")     # the root's creation, then
    answer_lost("set_terminated")  # the root's closing, each answered once with an error
    forget_root_runs()  # a new job: it looks up the root in the store
    workflow_context("train_localizer", {"seed": 3})
    with mlflow_run(cfg, "localize/point/sagittal_t1/fold0", {"fold": 0}) as logger:
        logger({"loss": 1.0}, 0)
    assert lost == ["create_run", "set_terminated"]
    lost.remove("create_run")  # the job's own run: its creation answered with an error too
    workflow_context("train_parent_run", {"seed": 3})
    parent = create_parent_run(cfg, "train/seed3", {"seed": 3})
    workflow_context(None)
    client = mlflow.MlflowClient(cfg["tracking_uri"])
    experiment = client.get_experiment_by_name("spinepipe").experiment_id
    runs = client.search_runs([experiment])
    assert sorted(r.info.run_name for r in runs) == [
        "localize/point/sagittal_t1/fold0", "pipeline", "train/seed3"]
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert parent in {r.info.run_id for r in runs}
    (child,) = [r for r in runs if r.info.run_name.startswith("localize/")]
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [1.0]


def test_parallel_jobs_agree_on_one_root_run(tmp_path, monkeypatch):
    """Jobs that all find no root and create one each end up on the same root; the losers'
    roots are deleted, so one root run stays."""
    import mlflow

    from spinepipe.tracking import election

    monkeypatch.chdir(tmp_path)
    cfg = _mlflow(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="spinepipe",
                  retry_attempts=2, retry_seconds=1.0)
    init_tracking(cfg)
    barrier = threading.Barrier(3)
    real_roots = election._roots
    first_look: set[int] = set()

    def racing_roots(uri, experiment_id, key):
        found = real_roots(uri, experiment_id, key)
        if threading.get_ident() not in first_look:  # everyone looks before anyone creates
            first_look.add(threading.get_ident())
            barrier.wait(timeout=30)
        return found

    monkeypatch.setattr(election, "_roots", racing_roots)
    chosen: list[str] = []

    def job():
        election.forget_root_runs()  # each a job of its own
        chosen.append(election.root_run_id(cfg["tracking_uri"], "spinepipe", "feedbeef"))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(chosen) == 3 and len(set(chosen)) == 1, chosen
    client = mlflow.MlflowClient(cfg["tracking_uri"])
    experiment = client.get_experiment_by_name("spinepipe").experiment_id
    (root,) = client.search_runs([experiment])
    assert root.info.run_id == chosen[0] and root.info.status == "FINISHED"


def test_git_commit_of_this_checkout(tmp_path):
    import subprocess

    from spinepipe.tracking.context import REPO_DIR, git_commit

    expected = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert git_commit() == expected and len(expected) == 40
    assert git_commit(tmp_path) is None  # not a checkout: no tag rather than a wrong one


def test_dataset_digest_follows_the_csvs_and_the_file_list(tmp_path):
    """The split's digest changes with a CSV's content, a file's size or a file more, and
    not with where the same data lies (paths are taken relative to the data folder)."""
    import polars as pl

    from spinepipe.tracking_datasets import dataset_records, split_digest

    def make(root):
        root.mkdir()
        for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
                     "test_series_descriptions.csv"):
            (root / name).write_text(f"{name}\n1,2\n")
        files = pl.DataFrame({"path": [str(root / "train_images/1/10/1.dcm"), str(root / "train_images/1/10/2.dcm")],
                              "file_size": [100, 200], "split": ["train", "train"], "study_id": [1, 1]})
        return files

    files = make(tmp_path / "a")
    base = split_digest(tmp_path / "a", "train", files)
    assert split_digest(tmp_path / "b", "train", make(tmp_path / "b")) == base
    assert split_digest(tmp_path / "a", "train", files.with_columns(file_size=pl.Series([100, 201]))) != base
    assert split_digest(tmp_path / "a", "train", files.head(1)) != base
    (tmp_path / "a" / "train.csv").write_text("train.csv\n1,3\n")
    assert split_digest(tmp_path / "a", "train", files) != base
    series = pl.DataFrame({"study_id": [1, 1], "series_id": [10, 11], "split": ["train", "train"]})
    records = dataset_records(tmp_path / "a", "synthetic", files, series)
    assert records["train"]["profile"] == {"studies": 1, "series": 2, "files": 2}
    assert records["test"]["profile"] == {"studies": 0, "series": 0, "files": 0}
    assert records["train"]["name"] == "synthetic:train"
