"""Rule register_model: the bundle (results/bundle, every model grading needs; its input is a
folder of DICOM studies) as an MLflow model of this job's own run register/seed{seed} (nested
under the seed's train run), registered under registry.name with its CV and test scores on
the new version."""
import json
import logging
from pathlib import Path

from spinepipe.bundle.registry import log_bundle
from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context
from spinepipe.tracking.retry import RetryPolicy, call_with_retry
from spinepipe.tracking.runs import mlflow_run
from spinepipe.tracking.store import TrackingError

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule, snakemake.config)
tracking = snakemake.params.tracking
uri = tracking["tracking_uri"]
name = snakemake.params.name
parent = json.loads(Path(snakemake.input.parent).read_text())
cv = json.loads(Path(snakemake.input.cv).read_text())
scores = {k: cv[k] for k in ("cv_score", "cv_score_annotated_points", "test_score") if cv.get(k) is not None}
policy = RetryPolicy.from_config(tracking)
run_name = f"register/seed{parent['seed']}"
record = {"name": name, "run_id": None, "run_name": run_name, "train_run_id": parent["run_id"],
          "scores": scores}


def register(run_id: str) -> str:
    info = call_with_retry("model registration", uri, policy, log_bundle, run_id, uri,
                           Path(snakemake.input.bundle), name)
    version = str(info.registered_model_version)
    call_with_retry("model version tags", uri, policy, describe, run_id, version)
    return version


def describe(run_id: str, version: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for key, value in scores.items():
        client.set_model_version_tag(name, version, key, f"{value:.6f}")
    client.set_model_version_tag(name, version, "source_run", run_id)
    client.set_model_version_tag(name, version, "train_run", parent["run_id"])
    client.update_model_version(name, version, description=(
        f"Bundle (localizers and severity fold ensemble) of run {parent['run_name']} ({parent['run_id']}); "
        "input: a folder of studies (column data_dir); "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())))


try:
    # a failed registration closes the run as FAILED; the job still succeeds (best effort)
    with mlflow_run(tracking, run_name, {"registry.name": name},
                    tags={"stage": "register", "seed": str(parent["seed"])},
                    parent_run_id=parent["run_id"]) as run:
        if run.run_id is None:
            raise TrackingError(f"tracking store {uri}: the run {run_name} could not be created")
        record["run_id"] = run.run_id
        version = register(run.run_id)
        run.set_tags({"registered_model": name, "registered_model_version": version})
    record |= {"version": version, "uri": f"models:/{name}/{version}"}
    logging.info("registered %s", record)
except Exception as error:  # noqa: BLE001 - best effort, as every tracking write after set-up
    record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
    logging.warning("the ensemble could not be registered at %s: %s (the submission stands)", uri,
                    record["error"])
Path(snakemake.output[0]).write_text(json.dumps(record, indent=2) + "\n")
