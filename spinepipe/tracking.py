"""MLflow tracking: runs, flattened config params, per-epoch metrics.

Every call that writes to the tracking store goes through :func:`call_with_retry`, which
retries what a busy store answers (a SQLite database locked by a parallel job, a connection
refused or timed out, a 5xx from a server) with exponential backoff:
``mlflow.retry_attempts`` tries spread over about ``mlflow.retry_seconds``.

What happens when the store still fails:

* must succeed (raise :class:`TrackingError` naming the URI): :func:`init_tracking` (the
  ``tracking_init`` rule, before any training job; :func:`check_store` first makes sure an
  HTTP store answers within ``mlflow.request_timeout_s`` and a SQLite file can be written,
  so a bad store fails in seconds) and :func:`start_parent_run` (a small job before
  training; the training runs hang under it);
* best effort (a warning naming the URI, and the job goes on and writes its outputs; only
  the tracked figures are lost): everything inside :func:`mlflow_run` (creating the run,
  params, per-epoch metrics, artifacts, closing it) and :func:`finish_run`. Training never
  stops for the tracking store. Once a call has used up its retries, the next calls of the
  same run try once each (a dead store costs each epoch one try, not the whole budget)
  until one succeeds again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

T = TypeVar("T")

REPO_DIR = Path(__file__).resolve().parents[1]
CONFIG_HASH_TAG = "spinepipe.config_hash"
RULE_TAG = "snakemake.rule"


@dataclass
class _Context:
    """What every run this process creates is tagged with and nested under."""

    rule: str | None = None
    config_hash: str | None = None           # the root run's key; None: runs stand alone
    root_run_ids: dict[str, str] = field(default_factory=dict)  # (uri, hash) -> root, cached
    datasets: dict[str, Any] | None = None   # split -> record (tracking_datasets)
    contexts: dict[str, str] | None = None   # split -> "training" | "evaluation"


_CONTEXT = _Context()


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits identifying a whole pipeline configuration."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def workflow_context(rule: str | None, config: Mapping[str, Any] | None = None,
                     datasets_file: str | Path | None = None,
                     contexts: Mapping[str, str] | None = None) -> None:
    """Called by a rule's script before it creates runs: the runs name the rule as their
    source (``mlflow.source.name``, tag ``snakemake.rule``); unless given another parent,
    they nest under the root run of ``config`` (the whole ``snakemake.config``; see
    :func:`root_run_id`); and they log the splits of ``datasets_file`` (rule
    ``dataset_record``) named in ``contexts`` (split -> ``training`` / ``evaluation``) as
    their MLflow dataset inputs. The config is read at run time, never a rule's param: a
    config change reruns only the stages that use the changed part, and those attach to the
    new configuration's root."""
    import json

    _CONTEXT.rule = rule
    _CONTEXT.config_hash = None if config is None else config_hash(config)
    _CONTEXT.datasets = None if datasets_file is None else json.loads(Path(datasets_file).read_text())
    _CONTEXT.contexts = dict(contexts or {})


def git_commit(repo: Path = REPO_DIR) -> str | None:
    """The pipeline checkout's commit, for MLflow's standard ``mlflow.source.git.commit``
    (None outside a git checkout)."""
    import subprocess

    try:
        result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags for a run created by a pipeline rule: the rule as the
    source name (not the temporary script Snakemake runs), type JOB, the git commit."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    tags = {MLFLOW_SOURCE_TYPE: "JOB"}
    if _CONTEXT.rule:
        tags[MLFLOW_SOURCE_NAME] = f"snakemake rule {_CONTEXT.rule}"
        tags[RULE_TAG] = _CONTEXT.rule
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags

DEFAULT_RETRY_ATTEMPTS = 6
DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_REQUEST_TIMEOUT_S = 5
SQLITE_HEADER = b"SQLite format 3\x00"
# Text of the errors a busy or briefly unreachable store gives (matched lower-case, along
# the exception's cause chain: MLflow wraps the SQLite and HTTP errors in MlflowException).
_TRANSIENT_TEXT = (
    "database is locked", "database is busy", "database table is locked",
    "connection refused", "connection reset", "connection aborted", "connectionerror",
    "failed to establish a new connection", "max retries exceeded", "timed out",
    "temporarily unavailable", "service unavailable", "bad gateway", "gateway timeout",
    "too many requests", "remote end closed",
)


class TrackingError(RuntimeError):
    """The tracking store cannot be used (the message names its URI)."""


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries; the waits between them double and add up to ``max_seconds``."""

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    max_seconds: float = DEFAULT_RETRY_SECONDS

    @classmethod
    def from_config(cls, tracking: Mapping[str, Any]) -> RetryPolicy:
        return cls(int(tracking.get("retry_attempts", DEFAULT_RETRY_ATTEMPTS)),
                   float(tracking.get("retry_seconds", DEFAULT_RETRY_SECONDS)))

    def delay(self, attempt: int) -> float:
        """Wait after failed try ``attempt`` (1-based)."""
        waits = max(self.attempts - 1, 1)
        return self.max_seconds * 2 ** (attempt - 1) / (2 ** waits - 1)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is what a locked SQLite store or a flaky server gives."""
    for cause in _causes(error):
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause).lower():
            return True
        text = f"{type(cause).__name__}: {cause}".lower()
        if any(fragment in text for fragment in _TRANSIENT_TEXT):
            return True
    return False


def call_with_retry(what: str, uri: str, policy: RetryPolicy, fn: Callable[..., T],
                    *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff while it fails transiently;
    the last error (or a non-transient one) is raised."""
    start = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - classified just below
            delay = policy.delay(attempt)
            if (not is_transient(error) or attempt == policy.attempts
                    or time.monotonic() - start + delay > policy.max_seconds):
                raise
            log.warning("MLflow %s at %s failed (%s: %s); try %d of %d in %.1f s", what, uri,
                        type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
                        attempt + 1, policy.attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _uri(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return tracking_uri


def _configure(tracking: Mapping[str, Any]) -> str:
    """The store's URI (a relative SQLite file's folder created); for an HTTP store, each
    request bounded by ``request_timeout_s`` and the retrying left to
    :func:`call_with_retry` (MLflow's own client otherwise retries a dead server for
    minutes). Environment variables the user has set win."""
    uri = tracking["tracking_uri"]
    if uri.startswith(("http://", "https://")):
        timeout = int(tracking.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S))
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
    check_reachable(uri, float(tracking.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S)))
    problem = _local_store_problem(uri, Path.cwd() if workdir is None else workdir)
    if problem:
        raise TrackingError(f"tracking store {uri} cannot be used: {problem}")


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(uri: str, name: str) -> str:
    """The experiment's id, created when absent."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
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
        _configure(tracking)
        experiment_id = call_with_retry("experiment set-up", uri, RetryPolicy.from_config(tracking),
                                        _experiment_id, uri, tracking["experiment"])
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable store
        raise TrackingError(f"tracking store {uri} cannot be used: {type(error).__name__}: "
                            f"{str(error).strip()[:500]}") from error
    log.info("tracking store %s, experiment %r (%s)", uri, tracking["experiment"], experiment_id)
    return experiment_id


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

    user_tags = {**dict(tags or {}), MLFLOW_RUN_NAME: run_name}
    if parent_run_id is None and _CONTEXT.config_hash is not None:
        parent_run_id = root_run_id(uri, experiment, _CONTEXT.config_hash)
    if parent_run_id:
        user_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    # the context registry's defaults first (user, ...), then ours over its source name/type
    resolved = {**registry.resolve_tags(user_tags), **source_tags()}
    run = _client(uri).create_run(_experiment_id(uri, experiment), run_name=run_name, tags=resolved)
    if _CONTEXT.datasets and _CONTEXT.contexts:
        from spinepipe.tracking_datasets import log_datasets

        try:
            log_datasets(uri, run.info.run_id, _CONTEXT.datasets, _CONTEXT.contexts)
        except Exception as error:  # noqa: BLE001 - the run stands without its dataset record
            log.warning("run %s: dataset inputs not logged at %s (%s: %s)", run_name, uri,
                        type(error).__name__, str(error)[:300])
    return run.info.run_id


def _log_params(uri: str, run_id: str, batch: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    _client(uri).log_batch(run_id, params=[Param(k, v) for k, v in batch.items()])


def _log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None,
                 timestamp: int) -> None:
    """``timestamp`` is taken once by the caller: a retry after a write that reached the store
    but timed out on the way back repeats the same entries, which the store then skips."""
    from mlflow.entities import Metric

    _client(uri).log_batch(run_id, metrics=[Metric(k, v, timestamp, step or 0)
                                            for k, v in metrics.items()])


def _log_artifact(uri: str, run_id: str, path: str) -> None:
    _client(uri).log_artifact(run_id, path)


def _log_artifacts(uri: str, run_id: str, files: list[str], artifact_path: str) -> None:
    client = _client(uri)
    for path in files:
        client.log_artifact(run_id, path, artifact_path)


def _set_terminated(uri: str, run_id: str, status: str) -> None:
    _client(uri).set_terminated(run_id, status)


class RunLogger:
    """Best-effort writes to one run: retried, then a warning naming the URI; never raises.
    Called as ``logger(metrics, step)`` it logs metrics."""

    def __init__(self, tracking: Mapping[str, Any], run_id: str | None = None) -> None:
        self.uri = tracking["tracking_uri"]
        self.policy = RetryPolicy.from_config(tracking)
        self.run_id = run_id
        self.degraded = False  # a call used up its retries: try once until one succeeds
        self.attempt("set-up", _configure, tracking)

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


_ACTIVE: list[RunLogger] = []  # runs opened by mlflow_run, innermost last


@contextlib.contextmanager
def mlflow_run(tracking: Mapping[str, Any], run_name: str, params: Mapping[str, Any],
               tags: Mapping[str, str] | None = None,
               parent_run_id: str | None = None) -> Iterator[RunLogger]:
    """Start a run (a child of ``parent_run_id`` when given), log params; yields a
    :class:`RunLogger`, called as ``log_metrics(metrics, step)``. Inside the block,
    :func:`log_artifact` attaches files. Best effort throughout: a store that keeps failing
    costs warnings, never the job."""
    logger = RunLogger(tracking)
    logger.run_id = logger.attempt(f"run start ({run_name})", _create_run, logger.uri,
                                   tracking["experiment"], run_name, tags, parent_run_id)
    if logger.run_id is None:
        log.warning("run %s is not tracked at %s", run_name, logger.uri)
    logger.log_params(params)
    _ACTIVE.append(logger)
    status = "FAILED"
    try:
        yield logger
        status = "FINISHED"
    finally:
        _ACTIVE.remove(logger)
        logger.terminate(status)


def log_artifact(path: Path | str) -> None:
    """Attach a file to the innermost open :func:`mlflow_run` (no-op outside one)."""
    if _ACTIVE:
        _ACTIVE[-1].log_artifact(path)


def start_parent_run(tracking: Mapping[str, Any], run_name: str, params: Mapping[str, Any],
                     tags: Mapping[str, str] | None = None) -> str:
    """Create the experiment's parent run (children attach to it from other processes) and
    return its id; it is left open (RUNNING) until :func:`finish_run`. Must succeed: raises
    TrackingError naming the URI."""
    uri = tracking["tracking_uri"]
    policy = RetryPolicy.from_config(tracking)
    try:
        _configure(tracking)
        run_id = call_with_retry("parent run start", uri, policy, _create_run, uri,
                                 tracking["experiment"], run_name, tags, None)
        for batch in _param_batches(params):
            call_with_retry("parent run params", uri, policy, _log_params, uri, run_id, batch)
    except Exception as error:  # noqa: BLE001 - reported with the store's URI
        raise TrackingError(f"tracking store {uri}: cannot create the parent run: "
                            f"{type(error).__name__}: {str(error).strip()[:500]}") from error
    return run_id


def _roots(uri: str, experiment_id: str, key: str) -> list[Any]:
    runs = _client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{key}' and tags.`stage` = 'pipeline'",
        max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def root_run_id(uri: str, experiment: str, key: str) -> str:
    """The root run of configuration ``key`` (tag ``spinepipe.config_hash``), created on
    first use. Parallel jobs may all find none and create one each: after creating, a job
    looks again and keeps the oldest root (start time, then id), deleting its own if it
    lost, so every job of the configuration attaches to the same root without a lock."""
    from mlflow.tracking.context import registry
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    cached = _CONTEXT.root_run_ids.get(f"{uri} {key}")
    if cached:
        return cached
    experiment_id = _experiment_id(uri, experiment)
    found = _roots(uri, experiment_id, key)
    if not found:
        client = _client(uri)
        tags = {**registry.resolve_tags({MLFLOW_RUN_NAME: "pipeline", CONFIG_HASH_TAG: key,
                                         "stage": "pipeline"}), **source_tags()}
        created = client.create_run(experiment_id, run_name="pipeline", tags=tags).info.run_id
        client.set_terminated(created, "FINISHED")  # a container: children may still attach
        found = _roots(uri, experiment_id, key)
        if found and found[0].info.run_id != created:
            client.delete_run(created)
            log.info("root run %s of configuration %s created beside %s: deleted", created, key,
                     found[0].info.run_id)
        found = found or [client.get_run(created)]
    _CONTEXT.root_run_ids[f"{uri} {key}"] = found[0].info.run_id
    return found[0].info.run_id


def finish_run(tracking: Mapping[str, Any], run_id: str, metrics: Mapping[str, float],
               artifacts: list[Path] = ()) -> None:
    """Log final metrics and artifacts to a run and mark it finished (best effort: the
    calling job has written its outputs already)."""
    logger = RunLogger(tracking, run_id)
    logger(metrics, None)
    for path in artifacts:
        logger.log_artifact(path)
    logger.terminate("FINISHED")


def log_artifact_dirs(tracking: Mapping[str, Any], run_id: str,
                      folders: Mapping[str, Path]) -> dict[str, list[str]]:
    """Log folders as artifacts of an existing run (artifact path -> folder), best effort;
    returns, per artifact path, the file names logged (empty where tracking failed). The
    run's status is left as it is."""
    logger = RunLogger(tracking, run_id)
    logged: dict[str, list[str]] = {}
    for artifact_path, folder in folders.items():
        logged[artifact_path] = logger.log_artifact_dir(folder, artifact_path)
    return logged
