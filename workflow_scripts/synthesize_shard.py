"""Rule synthesize_shard: render and write one shard of synthetic studies."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.generate import generate_shard

setup_logging(snakemake.log[0])
settings = snakemake.params.settings
generate_shard(settings["synthetic"], settings["seed"], snakemake.wildcards.split,
               range(settings["start"], settings["stop"]), Path(snakemake.params.dataset_dir),
               Path(snakemake.output[0]))
