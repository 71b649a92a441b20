"""Tracking never loses training: writes to a locked store are retried until it frees up,
an unreachable store fails tracking_init at once (naming it) while training only warns,
and each epoch's checkpoint is on disk before its figures go to the store."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time

import numpy as np
import pytest
import torch

from spinepipe.classify.data import CropDataset, Sample
from spinepipe.classify.pipeline import build_model
from spinepipe.classify.training import fit
from spinepipe.constants import LEVELS
from spinepipe.tracking import RunLogger, TrackingError, init_tracking, mlflow_run

LOCK_SECONDS = 4.0
BUSY_TIMEOUT_MS = 1000


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


def test_metrics_reach_a_store_locked_by_another_connection(tmp_path, short_sqlite_busy_timeout):
    db = tmp_path / "mlflow.db"
    tracking = {"tracking_uri": f"sqlite:///{db}", "experiment": "locked",
                "retry_attempts": 8, "retry_seconds": 10}
    experiment_id = init_tracking(tracking)
    with mlflow_run(tracking, "run", {"a": 1}) as log_metrics:
        holder = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another job in the middle of a write
        release = threading.Timer(LOCK_SECONDS, lambda: holder.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        try:
            log_metrics({"val_loss": 0.5}, 3)
        finally:
            release.join()
            holder.close()
        waited = time.monotonic() - started
    assert short_sqlite_busy_timeout, "MLflow's busy timeout was not shortened: the test proves nothing"
    assert LOCK_SECONDS - 0.5 < waited < LOCK_SECONDS + 8
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5)]
    assert run.info.status == "FINISHED"


def test_unreachable_store_fails_tracking_init_at_once(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match=uri):
        init_tracking({"tracking_uri": uri, "experiment": "x", "request_timeout_s": 2})
    assert time.monotonic() - started < 10


def test_unusable_sqlite_store_fails_tracking_init_at_once(tmp_path):
    (tmp_path / "folder.db").mkdir()
    uri = f"sqlite:///{tmp_path / 'folder.db'}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="folder.db"):
        init_tracking({"tracking_uri": uri, "experiment": "x"})
    assert time.monotonic() - started < 10


def test_metric_logging_to_a_dead_store_warns_and_goes_on(monkeypatch, caplog):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    uri = f"http://127.0.0.1:{_closed_port()}"
    logger = RunLogger({"tracking_uri": uri, "experiment": "x", "retry_attempts": 3,
                        "retry_seconds": 0.5, "request_timeout_s": 2}, run_id="0" * 32)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="spinepipe.tracking"):
        logger({"train_loss": 1.0}, 0)  # retried, then given up with a warning
        logger({"train_loss": 0.9}, 1)  # a store that failed is tried once per call
        logger.log_artifact(__file__)
        logger.terminate("FINISHED")
    assert time.monotonic() - started < 20
    given_up = [r.getMessage() for r in caplog.records if "is not tracked" in r.getMessage()]
    assert len(given_up) == 4 and all(uri in m for m in given_up)
    retries = [r for r in caplog.records if "try 2 of 3" in r.getMessage()]
    assert len(retries) == 1  # only the first call used the whole retry budget


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
           "select_by": "loss", "num_workers": 0}
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
