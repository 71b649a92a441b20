"""Rule qa_mlflow: the study sheets and galleries as artifacts of this job's own MLflow run
`qa`, nested under the configuration's root run (qa/studies/<study_id>.png,
qa/galleries/<gallery>.png and .csv)."""
import json
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context
from spinepipe.tracking.runs import mlflow_run

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule, snakemake.config)
folders = {"qa/studies": Path(snakemake.input.studies), "qa/galleries": Path(snakemake.input.galleries)}
# the sheets show the master seed's out-of-fold and test probabilities
tags = {"stage": "qa", "seed": str(snakemake.config["seed"])}
with mlflow_run(snakemake.params.tracking, "qa", {}, tags=tags) as run:
    logged = {artifact_path: run.log_artifact_dir(folder, artifact_path)
              for artifact_path, folder in folders.items()}
Path(snakemake.output[0]).write_text(json.dumps({"run_id": run.run_id, "run_name": "qa",
                                                 "artifacts": logged}, indent=2) + "\n")
