"""The tracking store: cheap checks that its URI can be used before anything is written
(:func:`check_store`), the MLflow client set-up (:func:`configure`, :func:`mlflow_client`,
:func:`experiment_id`) and the store's one-time creation (:func:`init_tracking`). What
cannot be used raises :class:`TrackingError` naming the URI."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from spinepipe.tracking.retry import RetryPolicy, call_with_retry

log = logging.getLogger("spinepipe.tracking")  # the package's logger, one for all its modules

SQLITE_HEADER = b"SQLite format 3\x00"


class TrackingError(RuntimeError):
    """The tracking store cannot be used (the message names its URI)."""


def _uri(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return tracking_uri


def configure(tracking: Mapping[str, Any]) -> str:
    """The store's URI (a relative SQLite file's folder created); for an HTTP store, each
    request bounded by ``request_timeout_s`` and the retrying left to
    :func:`~spinepipe.tracking.retry.call_with_retry` (MLflow's own client otherwise
    retries a dead server for minutes). Environment variables the user has set win."""
    uri = tracking["tracking_uri"]
    if uri.startswith(("http://", "https://")):
        timeout = int(tracking["request_timeout_s"])
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return _uri(uri)


def check_reachable(uri: str, timeout: float) -> None:
    """An HTTP(S) tracking server must answer (any status below 500) within ``timeout``
    seconds; other URIs are not checked here. Raises TrackingError naming the URI."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code < 500:
            return
        problem = f"HTTP {error.code} from {url}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        problem = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
    raise TrackingError(f"tracking store {uri} is not reachable within {timeout:g} s ({problem})")


def _writable_folder(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written (None when it can); creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"'{existing}' is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder '{existing}' is not writable"
    return None


def _local_store_problem(uri: str, workdir: Path) -> str | None:
    """Why a SQLite or file store cannot be used (None when it can, or for other schemes)."""
    def resolve(path: str) -> Path:
        local = Path(unquote(path)).expanduser()
        return local if local.is_absolute() else workdir / local

    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///") or uri.split("?")[0].endswith(":memory:"):
            return "not a SQLite file (expected sqlite:///relative/path.db or sqlite:////absolute/path.db)"
        database = resolve(uri[len("sqlite:///"):].split("?")[0])
        if database.exists():
            if not database.is_file():
                return f"'{database}' is not a file"
            if not os.access(database, os.R_OK | os.W_OK):
                return f"'{database}' is not writable"
            with database.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
            if header and header != SQLITE_HEADER:
                return f"'{database}' is not a SQLite database"
            return None
        return _writable_folder(database.parent)
    parsed = urlparse(uri)
    if parsed.scheme == "file" or (not parsed.scheme and uri):
        return _writable_folder(resolve(parsed.path if parsed.scheme else uri))
    return None


def check_store(tracking: Mapping[str, Any], workdir: Path | None = None) -> None:
    """Cheap checks that the store can be used, before anything is written to it: an HTTP
    server answers within ``request_timeout_s``; a SQLite database (or file store) is a
    writable file or can be created in a writable folder (relative paths from ``workdir``,
    default the working directory). Raises TrackingError naming the URI."""
    uri = tracking["tracking_uri"]
    check_reachable(uri, float(tracking["request_timeout_s"]))
    problem = _local_store_problem(uri, Path.cwd() if workdir is None else workdir)
    if problem:
        raise TrackingError(f"tracking store {uri} cannot be used: {problem}")


def mlflow_client(uri: str):
    """An MLflow client of the store at ``uri``."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id, created when absent."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted in {uri}: restore it or set "
                                f"another mlflow.experiment")
        return experiment.experiment_id
    try:
        # a model-training experiment, for UIs that read the kind (MLflow 3.17 picks its view
        # from the URL instead: README "Experiment tracking")
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:  # created meanwhile by a parallel job
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def init_tracking(tracking: Mapping[str, Any]) -> str:
    """Create the tracking store and experiment once, before parallel jobs use them
    (concurrent first use of a new SQLite store races on its schema migration). An
    unreachable or unusable store raises TrackingError naming the URI."""
    uri = tracking["tracking_uri"]
    check_store(tracking)
    try:
        configure(tracking)
        found = call_with_retry("experiment set-up", uri, RetryPolicy.from_config(tracking),
                                experiment_id, uri, tracking["experiment"])
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable store
        raise TrackingError(f"tracking store {uri} cannot be used: {type(error).__name__}: "
                            f"{str(error).strip()[:500]}") from error
    log.info("tracking store %s, experiment %r (%s)", uri, tracking["experiment"], found)
    return found
