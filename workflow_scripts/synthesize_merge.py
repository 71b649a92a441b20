"""Rule synthesize: merge the shards into the competition CSVs, image trees and ground truth."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.generate import merge_shards

setup_logging(snakemake.log[0])
merge_shards([Path(p) for p in snakemake.input.train], [Path(p) for p in snakemake.input.test],
             Path(snakemake.output.train_images).parent)
