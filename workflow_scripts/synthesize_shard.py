"""Rule synthesize_shard: render one shard of synthetic studies (images and table pieces)."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.generate import generate_shard

setup_logging(snakemake.log[0])
settings = snakemake.params.settings
generate_shard(settings["synthetic"], settings["seed"], snakemake.wildcards.split,
               settings["indices"], Path(snakemake.output[0]))
