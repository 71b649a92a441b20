"""Rule train_parent_run: the MLflow run train/seed{seed} that the per-family, per-fold runs
and the seed's evaluation runs nest under. It holds the seed's params and the train split as its
dataset input (the test split is cv_report's) and is terminated at once: a container that no later job writes to."""
import json
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.tracking.context import workflow_context
from spinepipe.tracking.runs import create_parent_run

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule, snakemake.config, snakemake.input.datasets,
                 {"train": "training"})
seed = int(snakemake.params.seed)
params = {"train": snakemake.params.train, "crops": snakemake.params.crops,
          "folds": snakemake.params.folds, "seed": seed}
run_name = f"train/seed{seed}"
run_id = create_parent_run(snakemake.params.tracking, run_name, params,
                           tags={"stage": "train", "seed": str(seed)})
Path(snakemake.output[0]).write_text(json.dumps({"run_id": run_id, "run_name": run_name,
                                                 "seed": seed}) + "\n")
