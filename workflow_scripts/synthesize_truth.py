"""Rule synthesize_truth: the synthetic dataset's ground truth (level centres, quirks)."""
from pathlib import Path

from spinepipe.logs import setup_logging
from spinepipe.synth.generate import merge_truth

setup_logging(snakemake.log[0])
merge_truth([Path(p) for p in snakemake.input.train], [Path(p) for p in snakemake.input.test],
            Path(snakemake.output[0]).parent)
