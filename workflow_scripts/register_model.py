"""Rule register_model: the fold ensemble as an MLflow model of the train parent run,
registered under registry.name with its CV and test scores on the new version."""
import json
import logging
from pathlib import Path

import polars as pl

from spinepipe.classify.mlflow_model import log_model
from spinepipe.logs import setup_logging
from spinepipe.tracking import RetryPolicy, call_with_retry, workflow_context

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule)
tracking = snakemake.params.tracking
uri = tracking["tracking_uri"]
run_id = json.loads(Path(snakemake.input.parent).read_text())["run_id"]
cv = json.loads(Path(snakemake.input.cv).read_text())
scores = {k: cv[k] for k in ("cv_score", "cv_score_annotated_points", "test_score") if cv.get(k) is not None}
policy = RetryPolicy.from_config(tracking)
record = {"name": snakemake.params.name, "run_id": run_id, "scores": scores}


def register() -> str:
    info = call_with_retry("model registration", uri, policy, log_model, run_id, uri, "ensemble",
                           [Path(p) for p in snakemake.input.models],
                           json.loads(Path(snakemake.input.temperatures).read_text()),
                           Path(snakemake.input.labels), snakemake.params.inference,
                           pl.read_parquet(snakemake.input.index), snakemake.params.name)
    version = str(info.registered_model_version)
    call_with_retry("model version tags", uri, policy, describe, version)
    return version


def describe(version: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for key, value in scores.items():
        client.set_model_version_tag(snakemake.params.name, version, key, f"{value:.6f}")
    client.set_model_version_tag(snakemake.params.name, version, "source_run", run_id)
    client.update_model_version(snakemake.params.name, version, description=(
        f"Fold ensemble of run {run_id}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())))


try:
    version = register()
    record |= {"version": version, "uri": f"models:/{snakemake.params.name}/{version}"}
    logging.info("registered %s", record)
except Exception as error:  # noqa: BLE001 - best effort, as every tracking write after set-up
    record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
    logging.warning("the ensemble could not be registered at %s: %s (the submission stands)", uri,
                    record["error"])
Path(snakemake.output[0]).write_text(json.dumps(record, indent=2) + "\n")
