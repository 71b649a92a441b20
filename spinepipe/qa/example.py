"""The README's example study sheet: the first test study's sheet, downscaled.

    python -m spinepipe.qa.example results docs/study_sheet.png   (or: make readme-sheet)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import polars as pl
from PIL import Image

log = logging.getLogger(__name__)


def example_sheet(results: Path, out: Path, width: int = 1000) -> Path:
    """The sheet of the first test study (by id) with all three series types, downscaled to
    ``width`` pixels and reduced to a 128-colour palette (a small file to commit)."""
    series = pl.read_parquet(results / "metadata" / "series.parquet").filter(pl.col("split") == "test")
    complete = series.group_by("study_id").agg(pl.col("series_description").n_unique().alias("types"))
    studies = sorted(complete.filter(pl.col("types") == 3)["study_id"].to_list())
    sheets = [results / "qa" / "studies" / f"{s}.png" for s in studies]
    found = next((p for p in sheets if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no test study sheet under {results / 'qa' / 'studies'}: "
                                "run `snakemake --cores all results/qa/studies` first")
    image = Image.open(found).convert("RGB")
    height = round(image.height * width / image.width)
    out.parent.mkdir(parents=True, exist_ok=True)
    small = image.resize((width, height), Image.LANCZOS).quantize(colors=128)
    small.save(out, optimize=True)
    log.info("%s -> %s (%d x %d)", found, out, width, height)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the run's results/ folder")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    example_sheet(args.results, args.out, args.width)


if __name__ == "__main__":
    main()
