"""Rule train_parent_run: the MLflow parent run the per-family, per-fold runs attach to."""
import json
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.tracking import start_parent_run, workflow_context

setup_logging(snakemake.log[0])
workflow_context(snakemake.rule, snakemake.config, snakemake.input.datasets,
                 {"train": "training", "test": "evaluation"})
params = {"train": snakemake.params.train, "crops": snakemake.params.crops,
          "folds": snakemake.params.folds, "seed": snakemake.params.seed}
run_id = start_parent_run(snakemake.params.tracking, f"train/seed{snakemake.params.seed}", params,
                          tags={"stage": "train", "seed": str(snakemake.params.seed)})
Path(snakemake.output[0]).write_text(json.dumps({"run_id": run_id}) + "\n")
