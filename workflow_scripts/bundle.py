"""Rule bundle: the trained pipeline as one folder (spinepipe.bundle)."""
import json
from pathlib import Path

import torch

from spinepipe.backbones import weights_provenance
from spinepipe.bundle.write import write_bundle
from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(max(snakemake.threads, 1))
cv = json.loads(Path(snakemake.input.cv).read_text())
scores = {k: cv[k] for k in ("cv_score", "cv_score_annotated_points", "test_score", "prior_score")
          if cv.get(k) is not None}
weights = {key: weights_provenance(path) for key, path in snakemake.params.weights.items() if path}
card = {"dataset": json.loads(Path(snakemake.input.dataset).read_text())["train"], "scores": scores,
        "weights": weights}
write_bundle(Path(snakemake.output[0]), localizers=[Path(p) for p in snakemake.input.localizers],
             severity_models=[Path(p) for p in snakemake.input.severity],
             temperatures=json.loads(Path(snakemake.input.temperatures).read_text()),
             labels=read_labels(Path(snakemake.input.labels)), settings=snakemake.params.settings, card=card)
