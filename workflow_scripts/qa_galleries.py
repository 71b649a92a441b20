"""Rule qa_galleries: one contact sheet (PNG) per gallery, and its cases as CSV beside it."""
import logging
from pathlib import Path

import polars as pl

from spinepipe.logs import setup_logging
from spinepipe.qa.cases import GALLERIES
from spinepipe.qa.galleries import render_gallery
from spinepipe.qa.sources import SplitSources

setup_logging(snakemake.log[0])
inputs = snakemake.input
sources = {}
for split in ("train", "test"):
    labels = getattr(inputs, f"{split}_labels")
    sources[split] = SplitSources.from_files(
        split=split,
        series=Path(inputs.series), instances=Path(inputs.instances),
        stacks=Path(getattr(inputs, f"{split}_stacks")),
        predictions=Path(getattr(inputs, f"{split}_predictions")), coordinates=Path(inputs.coordinates),
        crop_index=Path(getattr(inputs, f"{split}_crops")), crop_cfg=snakemake.params.crops,
        probabilities=Path(getattr(inputs, f"{split}_probabilities")),
        labels=Path(labels[0]) if labels else None,
        reasons=Path(getattr(inputs, f"{split}_reasons")),
        foramen_offset_mm=snakemake.params.foramen_offset_mm)


def inputs_for(study_id: int):
    for source in sources.values():
        found = source.inputs(study_id)
        if found is not None:
            return found
    return None


cases = pl.read_csv(inputs.cases)
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
for gallery, title in GALLERIES.items():
    chosen = cases.filter(pl.col("gallery") == gallery)
    chosen.write_csv(out / f"{gallery}.csv")
    tiles = render_gallery(chosen, inputs_for, out / f"{gallery}.png", title, dpi=snakemake.params.dpi)
    logging.info("%s: %d cases", gallery, tiles)
