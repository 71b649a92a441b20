# Lumbar spine MRI degenerative classification: RSNA 2024 format data -> submission.
# Stages live in rules/*.smk; the logic lives in the `spinepipe` package.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from spinepipe.config import ConfigError, validate
from spinepipe.preflight import preflight

min_version("9.0")


# config.yaml beside this file holds every default; Snakemake deep-merges --configfile
# overlays (configs/*.yaml) and --config values on top, so an overlay names only what it
# changes. (An absolute path: a relative one is read from the working directory, and
# Snakemake silently skips a missing one when --configfile is given.)
configfile: Path(workflow.basedir) / "config.yaml"


try:
    validate(config, Path(workflow.basedir))
    # names and files the config refers to (timm backbones, albumentations transforms,
    # weights, the tracking store, a real data_dir's CSVs), resolved before any job; only
    # in the main process, not again in every job a cluster runs
    if workflow.is_main_process:
        preflight(config, Path.cwd())
except ConfigError as error:
    raise WorkflowError(str(error))


wildcard_constraints:
    seed=r"\d+",


include: "rules/common.smk"
include: "rules/synthesize.smk"
include: "rules/dataset.smk"
include: "rules/metadata.smk"
include: "rules/tracking.smk"
include: "rules/folds.smk"
include: "rules/localize.smk"
include: "rules/crops.smk"
include: "rules/train.smk"
include: "rules/submission.smk"
include: "rules/bundle.smk"
include: "rules/qa.smk"


rule all:
    default_target: True
    input:
        default_targets(),
