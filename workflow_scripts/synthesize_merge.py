"""Rules synthesize_train / synthesize_test: one split's competition CSVs and image tree
from its shards."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.generate import merge_split

setup_logging(snakemake.log[0])
merge_split(snakemake.params.split, [Path(p) for p in snakemake.input.shards],
            Path(snakemake.output.images).parent)
