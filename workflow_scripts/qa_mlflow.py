"""Rule qa_mlflow: the study sheets and galleries as artifacts of the MLflow parent run
(qa/studies/<study_id>.png, qa/galleries/<gallery>.png and .csv)."""
import json
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.tracking import log_artifact_dirs

setup_logging(snakemake.log[0])
run_id = json.loads(Path(snakemake.input.parent).read_text())["run_id"]
folders = {"qa/studies": Path(snakemake.input.studies), "qa/galleries": Path(snakemake.input.galleries)}
logged = log_artifact_dirs(snakemake.params.tracking, run_id, folders)
Path(snakemake.output[0]).write_text(json.dumps({"run_id": run_id, "artifacts": logged}, indent=2) + "\n")
