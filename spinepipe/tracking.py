"""MLflow tracking: runs, flattened config params, per-epoch metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _uri(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return tracking_uri


def init_tracking(tracking: Mapping[str, Any]) -> str:
    """Create the tracking store and experiment once, before parallel jobs use them
    (concurrent first use of a new SQLite store races on its schema migration)."""
    import mlflow

    mlflow.set_tracking_uri(_uri(tracking["tracking_uri"]))
    experiment = mlflow.set_experiment(tracking["experiment"])
    return experiment.experiment_id


def _param_batches(params: Mapping[str, Any], size: int = 90) -> Iterator[dict[str, str]]:
    """Flattened params as strings, in batches (mlflow caps the params per call)."""
    items = [(k, str(v)[:500]) for k, v in flatten(params).items()]
    for start in range(0, len(items), size):
        yield dict(items[start:start + size])


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}


@contextlib.contextmanager
def mlflow_run(tracking: Mapping[str, Any], run_name: str, params: Mapping[str, Any],
               tags: Mapping[str, str] | None = None,
               parent_run_id: str | None = None) -> Iterator[Callable[[dict, int | None], None]]:
    """Start a run (a child of ``parent_run_id`` when given), log params; yields
    ``log_metrics(metrics, step)``. Inside the block, :func:`log_artifact` attaches files."""
    import mlflow

    mlflow.set_tracking_uri(_uri(tracking["tracking_uri"]))
    mlflow.set_experiment(tracking["experiment"])
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {}), parent_run_id=parent_run_id):
        for batch in _param_batches(params):
            mlflow.log_params(batch)

        def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
            mlflow.log_metrics(_finite(metrics), step=step)

        yield log_metrics


def log_artifact(path: Path | str) -> None:
    """Attach a file to the active run (no-op outside one)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path))


def start_parent_run(tracking: Mapping[str, Any], run_name: str, params: Mapping[str, Any],
                     tags: Mapping[str, str] | None = None) -> str:
    """Create the experiment's parent run (children attach to it from other processes) and
    return its id; it is left open (RUNNING) until :func:`finish_run`."""
    import mlflow

    mlflow.set_tracking_uri(_uri(tracking["tracking_uri"]))
    experiment = mlflow.set_experiment(tracking["experiment"])
    client = mlflow.MlflowClient()
    run = client.create_run(experiment.experiment_id, run_name=run_name, tags=dict(tags or {}))
    for batch in _param_batches(params):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in batch.items()])
    return run.info.run_id


def finish_run(tracking: Mapping[str, Any], run_id: str, metrics: Mapping[str, float],
               artifacts: list[Path] = ()) -> None:
    """Log final metrics and artifacts to a run and mark it finished."""
    import mlflow

    mlflow.set_tracking_uri(_uri(tracking["tracking_uri"]))
    client = mlflow.MlflowClient()
    for key, value in _finite(metrics).items():
        client.log_metric(run_id, key, value)
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
