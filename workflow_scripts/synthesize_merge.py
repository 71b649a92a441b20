"""Rule synthesize: merge the shard pieces into the competition CSVs and ground truth."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.generate import merge_shards

setup_logging(snakemake.log[0])
merge_shards([Path(p) for p in snakemake.input.train], [Path(p) for p in snakemake.input.test],
             Path(snakemake.params.dataset_dir))
