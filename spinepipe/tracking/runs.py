"""The runs a job creates and writes to: :func:`mlflow_run` (best effort: a store that keeps
failing costs warnings, never the job) with its :class:`RunLogger`, :func:`log_artifact`,
and :func:`create_parent_run` (must succeed). A run is created with a key, so a retried
creation never leaves a second run; it is closed by the job that created it, as FAILED when
its block raises or the job is sent SIGTERM (:class:`Terminated`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from spinepipe.tracking.context import RUN_KEY_TAG, current_context, source_tags
from spinepipe.tracking.election import root_run_id
from spinepipe.tracking.retry import RetryPolicy, call_with_retry
from spinepipe.tracking.store import TrackingError, configure, experiment_id, mlflow_client

log = logging.getLogger("spinepipe.tracking")  # the package's logger, one for all its modules

T = TypeVar("T")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _param_batches(params: Mapping[str, Any], size: int = 90) -> Iterator[dict[str, str]]:
    """Flattened params as strings, in batches (mlflow caps the params per call)."""
    items = [(k, str(v)[:500]) for k, v in flatten(params).items()]
    for start in range(0, len(items), size):
        yield dict(items[start:start + size])


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and v == v}


def _create_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None,
                parent_run_id: str | None) -> str:
    from mlflow.tracking.context import registry
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    context = current_context()
    user_tags = {**dict(tags or {}), MLFLOW_RUN_NAME: run_name}
    if parent_run_id is None and context.config_hash is not None:
        parent_run_id = root_run_id(uri, experiment, context.config_hash)
    if parent_run_id:
        user_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    # the context registry's defaults first (user, ...), then ours over its source name/type
    resolved = {**registry.resolve_tags(user_tags), **source_tags()}
    run = mlflow_client(uri).create_run(experiment_id(uri, experiment), run_name=run_name,
                                        tags=resolved)
    if context.datasets and context.contexts:
        from spinepipe.tracking_datasets import log_datasets

        try:
            log_datasets(uri, run.info.run_id, context.datasets, context.contexts)
        except Exception as error:  # noqa: BLE001 - the run stands without its dataset record
            log.warning("run %s: dataset inputs not logged at %s (%s: %s)", run_name, uri,
                        type(error).__name__, str(error)[:300])
    return run.info.run_id


def _keyed_runs(uri: str, exp_id: str, key: str) -> list[Any]:
    return mlflow_client(uri).search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                          max_results=10)


def _run_creator(uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None,
                 parent_run_id: str | None) -> Callable[[], str]:
    """A function for :func:`~spinepipe.tracking.retry.call_with_retry` that creates the run
    once: the run carries a fresh key, and a retry first looks for a run with that key (a
    creation that reached the store but whose answer was lost), so retries never leave a
    second, never-closed run."""
    key = uuid.uuid4().hex
    tries = 0

    def create() -> str:
        nonlocal tries
        tries += 1
        if tries > 1:
            found = _keyed_runs(uri, experiment_id(uri, experiment), key)
            if found:
                return found[0].info.run_id
        return _create_run(uri, experiment, run_name, {**dict(tags or {}), RUN_KEY_TAG: key},
                           parent_run_id)

    return create


def _log_params(uri: str, run_id: str, batch: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    mlflow_client(uri).log_batch(run_id, params=[Param(k, v) for k, v in batch.items()])


def _log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None,
                 timestamp: int) -> None:
    """``timestamp`` is taken once by the caller: a retry after a write that reached the store
    but timed out on the way back repeats the same entries, which the store then skips."""
    from mlflow.entities import Metric

    mlflow_client(uri).log_batch(run_id, metrics=[Metric(k, v, timestamp, step or 0)
                                                  for k, v in metrics.items()])


def _set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    mlflow_client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _log_artifact(uri: str, run_id: str, path: str) -> None:
    mlflow_client(uri).log_artifact(run_id, path)


def _log_artifacts(uri: str, run_id: str, files: list[str], artifact_path: str) -> None:
    client = mlflow_client(uri)
    for path in files:
        client.log_artifact(run_id, path, artifact_path)


def _set_terminated(uri: str, run_id: str, status: str) -> None:
    mlflow_client(uri).set_terminated(run_id, status)


class RunLogger:
    """Best-effort writes to the run this job created: retried, then a warning naming the
    URI; never raises. Called as ``logger(metrics, step)`` it logs metrics."""

    def __init__(self, tracking: Mapping[str, Any], run_id: str | None = None) -> None:
        self.uri = tracking["tracking_uri"]
        self.policy = RetryPolicy.from_config(tracking)
        self.run_id = run_id
        self.degraded = False  # a call used up its retries: try once until one succeeds
        self.attempt("set-up", configure, tracking)

    def attempt(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        policy = RetryPolicy(1, self.policy.max_seconds) if self.degraded else self.policy
        try:
            result = call_with_retry(what, self.uri, policy, fn, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - tracking must never stop the job
            self.degraded = True
            log.warning("MLflow %s failed at %s (%s: %s); the job goes on and writes its outputs, "
                        "but this is not tracked", what, self.uri, type(error).__name__,
                        " ".join(str(error).split())[:300])
            return None
        self.degraded = False
        return result

    def __call__(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        finite = _finite(metrics)
        if self.run_id is not None and finite:
            self.attempt(f"metrics (step {step})", _log_metrics, self.uri, self.run_id, finite, step,
                         int(time.time() * 1000))

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            for batch in _param_batches(params):
                self.attempt("params", _log_params, self.uri, self.run_id, batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is not None and tags:
            self.attempt("tags", _set_tags, self.uri, self.run_id, tags)

    def log_artifact(self, path: Path | str) -> None:
        if self.run_id is not None:
            self.attempt(f"artifact {Path(path).name}", _log_artifact, self.uri, self.run_id, str(path))

    def log_artifact_dir(self, folder: Path | str, artifact_path: str) -> list[str]:
        """The files of ``folder`` under ``artifact_path`` of the run (hidden ones, such as
        Snakemake's ``.snakemake_timestamp``, left out); the names logged, [] if not."""
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
        if self.run_id is None or not files:
            return []
        self.attempt(f"artifacts {artifact_path}", _log_artifacts, self.uri, self.run_id,
                     [str(p) for p in files], artifact_path)
        return [] if self.degraded else [p.name for p in files]

    def terminate(self, status: str) -> None:
        if self.run_id is not None:
            self.attempt(f"run status {status}", _set_terminated, self.uri, self.run_id, status)


_ACTIVE: list[RunLogger] = []  # runs opened by mlflow_run, innermost last (this module only)


class Terminated(SystemExit):
    """Raised in the main thread when the job is sent SIGTERM inside :func:`mlflow_run`, so
    that the run is closed as FAILED before the job exits (the exit status stays 143)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (Slurm's time limit or scancel, a cancelled workflow) raises :class:`Terminated`
    instead of ending the process at once; only where nobody else handles the signal."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked child (a DataLoader worker): die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def mlflow_run(tracking: Mapping[str, Any], run_name: str, params: Mapping[str, Any],
               tags: Mapping[str, str] | None = None,
               parent_run_id: str | None = None) -> Iterator[RunLogger]:
    """Create this job's run (a child of ``parent_run_id`` when given, else of the root run
    of the :func:`~spinepipe.tracking.context.workflow_context` configuration), log params;
    yields a :class:`RunLogger`, called as ``log_metrics(metrics, step)``. Inside the block,
    :func:`log_artifact` attaches files. The run is terminated when the block ends:
    FINISHED, or FAILED when it raises or the job gets SIGTERM. Best effort throughout: a
    store that keeps failing costs warnings, never the job."""
    logger = RunLogger(tracking)
    logger.run_id = logger.attempt(f"run start ({run_name})",
                                   _run_creator(logger.uri, tracking["experiment"], run_name, tags,
                                                parent_run_id))
    if logger.run_id is None:
        log.warning("run %s is not tracked at %s", run_name, logger.uri)
    logger.log_params(params)
    _ACTIVE.append(logger)
    status = "FAILED"
    try:
        with _sigterm_raises():
            yield logger
        status = "FINISHED"
    finally:
        _ACTIVE.remove(logger)
        logger.terminate(status)


def log_artifact(path: Path | str) -> None:
    """Attach a file to the innermost open :func:`mlflow_run` (no-op outside one)."""
    if _ACTIVE:
        _ACTIVE[-1].log_artifact(path)


def create_parent_run(tracking: Mapping[str, Any], run_name: str, params: Mapping[str, Any],
                      tags: Mapping[str, str] | None = None) -> str:
    """Create a parent run that runs of later jobs attach to (nested under the
    :func:`~spinepipe.tracking.context.workflow_context` configuration's root), log its
    params, terminate it (FINISHED) at once and return its id: it is a container, and nobody
    writes to it afterwards. Must succeed: raises TrackingError naming the URI (after
    marking a half-written run FAILED)."""
    uri = tracking["tracking_uri"]
    policy = RetryPolicy.from_config(tracking)
    run_id = None
    try:
        configure(tracking)
        run_id = call_with_retry("parent run start", uri, policy,
                                 _run_creator(uri, tracking["experiment"], run_name, tags, None))
        for batch in _param_batches(params):
            call_with_retry("parent run params", uri, policy, _log_params, uri, run_id, batch)
        call_with_retry("parent run end", uri, policy, _set_terminated, uri, run_id, "FINISHED")
    except Exception as error:  # noqa: BLE001 - reported with the store's URI
        if run_id is not None:
            with contextlib.suppress(Exception):
                _set_terminated(uri, run_id, "FAILED")
        raise TrackingError(f"tracking store {uri}: cannot create the parent run: "
                            f"{type(error).__name__}: {str(error).strip()[:500]}") from error
    return run_id
