"""Rule synthetic_learnability: a simple model on the true centres versus the prior."""
import json
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.learnability import learnability_check

setup_logging(snakemake.log[0])
result = learnability_check(Path(snakemake.params.dataset_dir))
Path(snakemake.output[0]).write_text(json.dumps(result, indent=2))
