"""Rule qa_sheets: one study sheet (PNG) per study of a split's shard."""
import logging
import time
from pathlib import Path

from tqdm import tqdm

from spinepipe.logs import setup_logging
from spinepipe.qa.sheet import render_study_sheet
from spinepipe.qa.sources import SplitSources, shard_studies

setup_logging(snakemake.log[0])
inputs = snakemake.input
optional = lambda name: Path(getattr(inputs, name)[0]) if getattr(inputs, name) else None  # noqa: E731
sources = SplitSources.from_files(
    split=snakemake.wildcards.split,
    series=Path(inputs.series), instances=Path(inputs.instances), stacks=Path(inputs.stacks),
    predictions=Path(inputs.predictions), coordinates=Path(inputs.coordinates),
    crop_index=Path(inputs.crops), crop_cfg=snakemake.params.crops,
    probabilities=Path(inputs.probabilities), labels=optional("labels"),
    reasons=Path(inputs.reasons), foramen_offset_mm=snakemake.params.foramen_offset_mm)
studies = sources.studies()
if inputs.only:  # train: the sampled studies and every gallery case
    wanted = {int(s) for s in Path(inputs.only[0]).read_text().split()}
    studies = [s for s in studies if s in wanted]
studies = shard_studies(studies, int(snakemake.wildcards.shard), snakemake.params.shards)
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
for study_id in tqdm(studies, desc=f"sheets {snakemake.wildcards.split} shard {snakemake.wildcards.shard}"):
    study = sources.inputs(study_id)
    study.title = f"{snakemake.wildcards.split} study {study_id}"
    render_study_sheet(study, out / f"{study_id}.png", dpi=snakemake.params.dpi)
logging.info("%d sheets in %.1f s", len(studies), time.perf_counter() - start)
