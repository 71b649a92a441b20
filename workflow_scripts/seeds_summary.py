"""Rule seeds_summary: mean and spread of the headline figures over the master seed's run and
each further training seed's (train.seeds), results/eval/seeds.json."""
import json
import logging
from pathlib import Path

from spinepipe.classify.seeds import summarize_seeds, summary_line
from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
seeds = [snakemake.params.master_seed, *snakemake.params.seeds]
paths = [snakemake.input.main, *snakemake.input.seeds]
assert len(seeds) == len(paths), (seeds, paths)
runs = {seed: json.loads(Path(path).read_text()) for seed, path in zip(seeds, paths)}
summary = summarize_seeds(runs, master_seed=snakemake.params.master_seed)
Path(snakemake.output[0]).write_text(json.dumps(summary, indent=2) + "\n")
logging.info("%s", summary_line(summary))
for name, figure in summary["figures"].items():
    if figure["missing"]:
        logging.warning("%s: missing from seeds %s, summarized over the other %d",
                        name, figure["missing"], figure["n"])
