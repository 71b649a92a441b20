"""Rule cv_eval: out-of-fold competition metric vs the prior, temperatures, figures (cv.json)."""
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from spinepipe.classify.evaluate import evaluate_oof
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.tracking import finish_run, flatten

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
predictions = pl.concat([pl.read_parquet(p) for p in snakemake.input.predictions])
figures = Path(snakemake.output.confusion).parent
result, temperatures = evaluate_oof(predictions, read_labels(Path(snakemake.input.labels)),
                                    np.asarray(cfg["class_weights"]), cfg["temperature_scaling"],
                                    figures)
Path(snakemake.output.cv).write_text(json.dumps(result, indent=2))
Path(snakemake.output.temperatures).write_text(json.dumps(temperatures, indent=2))
logging.info("cv: %s", json.dumps(result, indent=1))
parent = json.loads(Path(snakemake.input.parent).read_text())["run_id"]
finish_run(snakemake.params.tracking, parent, flatten({"cv": result}),
           [Path(snakemake.output.cv), Path(snakemake.output.confusion),
            Path(snakemake.output.calibration)])
