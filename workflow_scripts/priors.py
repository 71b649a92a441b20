"""Rule priors: the training label frequencies per condition and level (the prediction of a
submission row no view serves), as the bundle carries them."""
from pathlib import Path

from spinepipe.dataset import read_labels
from spinepipe.logs import setup_logging
from spinepipe.metric import prior_table

setup_logging(snakemake.log[0])
prior_table(read_labels(Path(snakemake.input.labels))).write_csv(snakemake.output[0])
