"""MLflow tracking: runs, flattened config params, per-epoch metrics.

**One job, one run.** Every run is created and terminated by the same job: FINISHED when
its block ends, FAILED when the block raises or the job is sent SIGTERM (a Slurm time limit,
a cancelled workflow), before the job exits. No job writes metrics, params, tags or
artifacts into a run another job created; runs of later jobs only point at an earlier run
as their parent (the tag ``mlflow.parentRunId``, set on themselves). A parent is therefore
a finished container before its children exist: the configuration's root run ``pipeline``
(:func:`root_run_id`) is created already terminated, a training seed's run
(:func:`create_parent_run`) right after its params are written.

Every call that writes to the tracking store goes through :func:`call_with_retry`, which
retries what a busy store answers (a SQLite database locked by a parallel job, a connection
refused or timed out, a 5xx from a server) with exponential backoff:
``mlflow.retry_attempts`` tries spread over about ``mlflow.retry_seconds``. Retries never
duplicate: a metric's timestamp is taken once, so a repeated write is the same entry; a run
is created with a key (tag ``spinepipe.run_key``), so a retry after a creation that reached
the store but whose answer was lost finds that run instead of creating a second one (which
nobody would ever close); parallel creators of a root agree on one.

What happens when the store still fails:

* must succeed (raise :class:`TrackingError` naming the URI): :func:`init_tracking` (the
  ``tracking_init`` rule, before any training job; :func:`check_store` first makes sure an
  HTTP store answers within ``mlflow.request_timeout_s`` and a SQLite file can be written,
  so a bad store fails in seconds) and :func:`create_parent_run` (a small job before
  training; the training runs hang under it);
* best effort (a warning naming the URI, and the job goes on and writes its outputs; only
  the tracked figures are lost): everything inside :func:`mlflow_run` (creating the run,
  params, per-epoch metrics, artifacts, closing it). Training never stops for the tracking
  store. Once a call has used up its retries, the next calls of the same run try once each
  (a dead store costs each epoch one try, not the whole budget) until one succeeds again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

T = TypeVar("T")

REPO_DIR = Path(__file__).resolve().parents[1]
CONFIG_HASH_TAG = "spinepipe.config_hash"
RULE_TAG = "snakemake.rule"
RUN_KEY_TAG = "spinepipe.run_key"


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
                     datasets_file: str | Path | Iterable[str | Path] | None = None,
                     contexts: Mapping[str, str] | None = None) -> None:
    """Called by a rule's script before it creates runs: the runs name the rule as their
    source (``mlflow.source.name``, tag ``snakemake.rule``); unless given another parent,
    they nest under the root run of ``config`` (the whole ``snakemake.config``; see
    :func:`root_run_id`); and they log the splits of ``datasets_file`` (one or more of rule
    ``dataset_record``'s per-split files) named in ``contexts`` (split -> ``training`` / ``evaluation``) as
    their MLflow dataset inputs. The config is read at run time, never a rule's param: a
    config change reruns only the stages that use the changed part, and those attach to the
    new configuration's root."""
    import json

    _CONTEXT.rule = rule
    _CONTEXT.config_hash = None if config is None else config_hash(config)
    if datasets_file is None:
        _CONTEXT.datasets = None
    else:
        files = [datasets_file] if isinstance(datasets_file, str | Path) else list(datasets_file)
        _CONTEXT.datasets = {split: record for f in files
                             for split, record in json.loads(Path(f).read_text()).items()}
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


def _keyed_runs(uri: str, experiment_id: str, key: str) -> list[Any]:
    return _client(uri).search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                    max_results=10)


def _run_creator(uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None,
                 parent_run_id: str | None) -> Callable[[], str]:
    """A function for :func:`call_with_retry` that creates the run once: the run carries a
    fresh key, and a retry first looks for a run with that key (a creation that reached the
    store but whose answer was lost), so retries never leave a second, never-closed run."""
    key = uuid.uuid4().hex
    tries = 0

    def create() -> str:
        nonlocal tries
        tries += 1
        if tries > 1:
            found = _keyed_runs(uri, _experiment_id(uri, experiment), key)
            if found:
                return found[0].info.run_id
        return _create_run(uri, experiment, run_name, {**dict(tags or {}), RUN_KEY_TAG: key},
                           parent_run_id)

    return create


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


def _set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _log_artifact(uri: str, run_id: str, path: str) -> None:
    _client(uri).log_artifact(run_id, path)


def _log_artifacts(uri: str, run_id: str, files: list[str], artifact_path: str) -> None:
    client = _client(uri)
    for path in files:
        client.log_artifact(run_id, path, artifact_path)


def _set_terminated(uri: str, run_id: str, status: str) -> None:
    _client(uri).set_terminated(run_id, status)


class RunLogger:
    """Best-effort writes to the run this job created: retried, then a warning naming the
    URI; never raises. Called as ``logger(metrics, step)`` it logs metrics."""

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


_ACTIVE: list[RunLogger] = []  # runs opened by mlflow_run, innermost last


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
    of the :func:`workflow_context` configuration), log params; yields a :class:`RunLogger`,
    called as ``log_metrics(metrics, step)``. Inside the block, :func:`log_artifact` attaches
    files. The run is terminated when the block ends: FINISHED, or FAILED when it raises or
    the job gets SIGTERM. Best effort throughout: a store that keeps failing costs warnings,
    never the job."""
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
    :func:`workflow_context` configuration's root), log its params, terminate it (FINISHED)
    at once and return its id: it is a container, and nobody writes to it afterwards. Must
    succeed: raises TrackingError naming the URI (after marking a half-written run FAILED)."""
    uri = tracking["tracking_uri"]
    policy = RetryPolicy.from_config(tracking)
    run_id = None
    try:
        _configure(tracking)
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


def _roots(uri: str, experiment_id: str, key: str) -> list[Any]:
    runs = _client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{key}' and tags.`stage` = 'pipeline'",
        max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


_PROCESS_KEY = uuid.uuid4().hex
# how long a job that created a root waits before choosing among the roots it sees
ROOT_SETTLE_SECONDS = 1.0


def root_run_id(uri: str, experiment: str, key: str) -> str:
    """The root run of configuration ``key`` (tag ``spinepipe.config_hash``), created on
    first use, already terminated (FINISHED, its end time its start time): a container that
    nobody writes to. Parallel jobs may all find none and create one each: after creating, a
    job looks again and keeps the oldest root (start time, then id), deleting its own if it
    lost, so every job of the configuration attaches to the same root without a lock. A
    retry of this (a store that failed half-way) finds its own root by its key (process and
    thread) and closes or deletes it, so no root is left RUNNING or twice."""
    from mlflow.tracking.context import registry
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    cached = _CONTEXT.root_run_ids.get(f"{uri} {key}")
    if cached:
        return cached
    experiment_id = _experiment_id(uri, experiment)
    client = _client(uri)
    mine = f"root-{key}-{_PROCESS_KEY}-{threading.get_ident()}"
    found = _roots(uri, experiment_id, key)
    created = None
    if not found:
        tags = {**registry.resolve_tags({MLFLOW_RUN_NAME: "pipeline", CONFIG_HASH_TAG: key,
                                         "stage": "pipeline", RUN_KEY_TAG: mine}), **source_tags()}
        created = client.create_run(experiment_id, run_name="pipeline", tags=tags)
        # a parallel creator stamps its start time before its insert commits, so its root
        # can sort first yet be invisible for a moment: look once the inserts have landed
        time.sleep(ROOT_SETTLE_SECONDS)
        found = _roots(uri, experiment_id, key) or [created]
    own = [r for r in found if r.data.tags.get(RUN_KEY_TAG) == mine]
    for run in own:  # a container: terminated at once, children may still attach
        if run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, "FINISHED", end_time=run.info.start_time)
    for run in own:
        if run.info.run_id != found[0].info.run_id:
            client.delete_run(run.info.run_id)
            log.info("root run %s of configuration %s created beside %s: deleted", run.info.run_id,
                     key, found[0].info.run_id)
    _CONTEXT.root_run_ids[f"{uri} {key}"] = found[0].info.run_id
    return found[0].info.run_id
