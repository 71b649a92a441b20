"""Rule qa_studies: every shard's sheets in one folder, results/qa/studies/<study_id>.png
(hard links where the filesystem allows, copies otherwise)."""
import logging
import os
import shutil
from pathlib import Path

from spinepipe.logs import setup_logging

setup_logging(snakemake.log[0])
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
count = 0
for shard in snakemake.input.shards:
    for sheet in sorted(Path(shard).glob("*.png")):
        target = out / sheet.name
        try:
            os.link(sheet, target)
        except OSError:
            shutil.copyfile(sheet, target)
        count += 1
logging.info("%d study sheets in %s", count, out)
