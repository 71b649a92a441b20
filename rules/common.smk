# Shared helpers of the rule files (the functions live here, so the rule files hold rules only);
# where the dataset lives, how synthetic studies are sharded, code inputs, seeds, the file
# lists a rule gathers.
import functools

import polars as pl

from spinepipe.bundle.manifest import (
    BundleError,
    inference_settings,
    localization_settings,
    resolve_bundle,
)
from spinepipe.code_inputs import import_closure
from spinepipe.constants import FAMILIES
from spinepipe.crops.views import FAMILY_INPUTS
from spinepipe.dataset import DatasetError, read_series_descriptions
from spinepipe.localize import settings as localize_settings
from spinepipe.synth.layout import SPLIT_CSVS, TRUTH_CSVS, shard_indices

# Predict-only mode (predict.bundle set): the studies of data_dir are graded with a trained
# bundle, and only inference is planned (targets in default_targets). The bundle is read (a
# models:/ URI fetched once into results/bundles/) and, in the main process, verified against
# its manifest before any job; its settings replace the training configuration's.
PREDICT = bool(config["predict"]["bundle"])
BUNDLE = None
if PREDICT:
    try:
        BUNDLE = resolve_bundle(
            config["predict"]["bundle"],
            Path("results/bundles"),
            config["mlflow"]["tracking_uri"],
            verify=workflow.is_main_process,
        )
    except BundleError as error:
        raise WorkflowError(f"predict.bundle: {error}") from error
# what the inference stages read (localization, crops, ensemble): the bundle's or this config's
SETTINGS = BUNDLE.settings if PREDICT else inference_settings(config)
RUNTIME = config["predict"]["runtime"] if PREDICT else "torch"
SYNTHETIC = not config["data_dir"]
SYNTHETIC_DIR = Path("results/synthetic")
DATA_DIR = SYNTHETIC_DIR if SYNTHETIC else Path(config["data_dir"])
SYNTHETIC_CSVS = [*SPLIT_CSVS["train"], *SPLIT_CSVS["test"], *TRUTH_CSVS]
SPLITS = ("train", "test")
# Per-study stages (synthesis, header parse, localizer stacks and inference) run one job per
# split and shard; a study's shard is study_id % SHARDS, so a new study touches one shard.
SHARDS = config["metadata"]["shards"]


def synthetic_shards(split):
    return [str(SYNTHETIC_DIR / "shards" / f"{split}_{k:04d}") for k in range(SHARDS)]


def shard_settings(wildcards):
    """What one synthetic shard's content depends on: its studies' indices and the
    generator's settings, not the total study count (a new study changes only its shard)."""
    syn = {k: v for k, v in config["synthetic"].items() if k not in ("n_train", "n_test")}
    indices = _synthetic_shard_indices(wildcards.split)
    return {"seed": config["seed"], "synthetic": syn, "indices": indices[int(wildcards.shard)]}


@functools.cache
def _synthetic_shard_indices(split):
    """Per shard, its studies' indices: drawn once per split and parse, not once per job
    (every Slurm job parses the workflow again)."""
    return shard_indices(config["seed"], split, config["synthetic"][f"n_{split}"], SHARDS)


def _source_series_table(split):
    """The series rows of a split's source CSV (a real data_dir), read when the workflow is
    parsed: shard membership must be known before any job runs."""
    path = DATA_DIR / f"{split}_series_descriptions.csv"
    if not path.is_file():
        raise WorkflowError(f"{path}: missing (data_dir {DATA_DIR} must hold the competition CSVs)")
    try:
        return read_series_descriptions(path)
    except DatasetError as error:
        raise WorkflowError(str(error)) from error


_SOURCE_TABLES = {}


def shard_rows(split, shard):
    """The (study_id, series_id, series_description) rows of one shard of a real dataset's
    split, as a string: a params value, so a job reruns when its own rows change and never
    for another shard's."""
    if split not in _SOURCE_TABLES:
        _SOURCE_TABLES[split] = _source_series_table(split)
    table = _SOURCE_TABLES[split]
    mine = table.filter((pl.col("study_id") % SHARDS) == int(shard)).sort("study_id", "series_id")
    return mine.select("study_id", "series_id", "series_description").write_csv()


def instances_shard_source(wildcards):
    """Where one header-parse shard's studies come from: its synthesis shard (images and
    series rows), or the real dataset's series CSV (ancient: its rows are in params; the
    images are read through the header cache)."""
    if SYNTHETIC:
        return {
            "source": str(
                SYNTHETIC_DIR / "shards" / f"{wildcards.split}_{int(wildcards.shard):04d}"
            )
        }
    return {"source": ancient(dataset_file(f"{wildcards.split}_series_descriptions.csv"))}


def instances_shard_rows(wildcards):
    return "" if SYNTHETIC else shard_rows(wildcards.split, wildcards.shard)


def localize_shard_inputs(wildcards):
    """One localization shard's own stacks and header rows; the folds for train (each study
    is localized by the models of the fold that held it out)."""
    split, shard = wildcards.split, wildcards.shard
    inputs = {
        "stacks": f"results/localize/stacks/{split}/shard{shard}/index.parquet",
        "arrays": f"results/localize/stacks/{split}/shard{shard}/stacks.npy",
        "instances": f"results/metadata/{split}/instances_{shard}.parquet",
        "series": f"results/metadata/{split}/series_{shard}.parquet",
    }
    if split == "train":
        inputs["folds"] = "results/folds.parquet"
    return inputs


# MLflow dataset records of both splits (rule dataset_record), logged by the evaluation runs
DATASET_RECORDS = [f"results/tracking/datasets_{split}.json" for split in SPLITS]
RECORD_CSVS = {"train": SPLIT_CSVS["train"], "test": ("test_series_descriptions.csv",)}

PACKAGE_DIR = Path(workflow.basedir) / "spinepipe"
SCRIPTS_DIR = Path(workflow.basedir) / "workflow_scripts"


def script_code(script):
    """The package modules workflow_scripts/<script>.py executes (its import closure in
    spinepipe), as inputs: editing one reruns the rule and what follows (Snakemake tracks a
    rule's script, not the library code it imports). Derived, so it cannot drift from the code."""
    return [str(path) for path in import_closure(SCRIPTS_DIR / f"{script}.py", PACKAGE_DIR)]


def inherited_input(rule, **overrides):
    """The named inputs of ``rule`` (a ``rules.<name>`` proxy) with ``overrides`` replacing
    some of them. An input section in a ``use rule ... with`` block replaces the whole input
    (Snakemake 9 merges only ``params`` by keyword), so a copy that changes one input names
    the others through this and keeps following the original rule's edits."""
    inputs = dict(rule.input.items())
    named = sum(len(v) if isinstance(v, list) else 1 for v in inputs.values())
    unknown = sorted(set(overrides) - set(inputs))
    if named != len(rule.input) or unknown:
        raise WorkflowError(
            f"inherited_input({rule.rule.name}): every input must be named "
            f"and every override an existing name (unknown: {unknown})"
        )
    return {**inputs, **overrides}


# Further training seeds (train.seeds): each repeats the severity classifiers and everything
# downstream of them under results/seeds/{seed}/ (rules *_seed in train.smk and submission.smk);
# the master seed's run stays under results/train, results/eval, ...
# (--config gives them as digit strings, config files as integers)
# (checked by spinepipe.config.validate: no repeats, not the master seed)
SEEDS = [int(s) for s in config["train"]["seeds"]]


def seed_path(path):
    """The seed copy of a path of the master seed's run: results/X -> results/seeds/{seed}/X,
    logs/X -> logs/seeds/{seed}/X."""
    top, rest = path.split("/", 1)
    if top not in ("results", "logs"):
        raise WorkflowError(f"seed_path: {path} is neither under results/ nor under logs/")
    return f"{top}/seeds/{{seed}}/{rest}"


def dataset_file(name):
    """A file of the active dataset (synthetic ones are produced by the workflow)."""
    return str(DATA_DIR / name)


def default_targets():
    if PREDICT:
        return ["results/submission.csv", "results/qa/studies"]
    targets = [
        "results/dataset/summary.json",
        "results/metadata/axial_xref.parquet",
        "results/localize/coordinates.parquet",
        "results/crops/train/summary.json",
        "results/crops/test/summary.json",
        "results/crops/train_predicted/summary.json",
        "results/submission.csv",
        "results/eval/cv.json",
        "results/qa/studies",
        "results/qa/galleries",
        "results/qa/mlflow.json",
        "results/tracking/registered_model.json",
        "results/bundle",
    ]
    if SYNTHETIC:
        targets += [
            "results/synthetic/learnability.json",
            "results/eval/geometry.json",
            "results/eval/localization.json",
        ]
    if SEEDS:
        targets.append("results/eval/seeds.json")
    return targets


# Localization: a point model per series type and fold, and the slice models the slice
# methods use (or all of them, to compare the methods: localize.compare_slice_methods).
LOCALIZE_TASKS = list(localize_settings.TASKS)

# Training jobs start longest first, so that the jobs side by side end together instead of one
# long job running alone at the end (default run, one thread per job: point models Sagittal T1
# about 150 s, Sagittal T2 87 s, Axial T2 25 s; severity models subarticular 147 s, spinal and
# foraminal 80 s)
LOCALIZER_PRIORITY = {"sagittal_t1": 3, "sagittal_t2": 2, "axial_t2": 1}
SEVERITY_PRIORITY = {"all": 3, "subarticular": 2, "spinal": 1, "foraminal": 1}

# wildcard patterns of the condition families and of every severity model (the families and
# the all-series comparison model)
FAMILY_PATTERN = "|".join(FAMILIES)
MODEL_FAMILY_PATTERN = "|".join(FAMILY_INPUTS)


def localizer_priority(wildcards):
    return LOCALIZER_PRIORITY[wildcards.task]


def severity_priority(wildcards):
    return SEVERITY_PRIORITY[wildcards.family]


def localizer_checkpoints():
    return [
        f"results/localize/models/{kind}_{task}_fold{fold}.pt"
        for kind, task in localize_settings.trained_models(config["localize"])
        for fold in range(config["folds"]["n"])
    ]


def onnx_exports(checkpoints):
    """The ONNX exports beside checkpoints, when grading with onnxruntime (else none)."""
    return [str(Path(p).with_suffix(".onnx")) for p in checkpoints] if RUNTIME == "onnx" else []


def localizer_models():
    """The localizers of rule localize (this run's, or the bundle's)."""
    return [str(p) for p in BUNDLE.localizers] if PREDICT else localizer_checkpoints()


def localizer_onnx():
    return onnx_exports(localizer_models())


def severity_model(wildcards):
    """The severity fold model predict_test runs: this run's, or the bundle's."""
    if PREDICT:
        return str(BUNDLE.severity_model(wildcards.family, wildcards.fold))
    return f"results/train/models/{wildcards.family}_fold{wildcards.fold}.pt"


def severity_onnx(wildcards):
    return onnx_exports([severity_model(wildcards)])


# the ensemble's temperatures and the prior of rows no view serves: this run's, or the bundle's
TEMPERATURES = (
    str(BUNDLE.path("temperatures.json")) if PREDICT else "results/train/temperatures.json"
)
PRIORS = str(BUNDLE.path("priors.csv")) if PREDICT else "results/train/priors.csv"
# the metadata tables of the graded studies (a bundle grades its data_dir's test split alone)
GRADED_METADATA = "results/metadata/test" if PREDICT else "results/metadata"


def sample_submission():
    """sample_submission.csv, optional when grading with a bundle: without it every study
    of test_series_descriptions.csv is graded at every condition and level."""
    if PREDICT and not (DATA_DIR / "sample_submission.csv").is_file():
        return []
    return [dataset_file("sample_submission.csv")]


def crop_shards(split):
    return expand(
        "results/crops/{split}/shard{shard}.parquet",
        split=split,
        shard=range(config["crops"]["shards"]),
    )


def model_families():
    families = list(config["train"]["families"])
    return families + (["all"] if config["train"]["all_series_model"] else [])


def oof_predictions():
    return expand(
        "results/train/oof/{family}_fold{fold}.parquet",
        family=model_families(),
        fold=range(config["folds"]["n"]),
    )


def end_to_end_oof_predictions():
    return expand(
        "results/predict_oof/{family}_fold{fold}.parquet",
        family=config["train"]["families"],
        fold=range(config["folds"]["n"]),
    )


def family_models():
    return expand(
        "results/train/models/{family}_fold{fold}.pt",
        family=model_families(),
        fold=range(config["folds"]["n"]),
    )


def test_predictions():
    return expand(
        "results/predict/{family}_fold{fold}.parquet",
        family=BUNDLE.families if PREDICT else config["train"]["families"],
        fold=BUNDLE.folds if PREDICT else range(config["folds"]["n"]),
    )


def qa_sheet_shards():
    return expand(
        "results/qa/sheets/{split}/shard{shard}",
        split=("test",) if PREDICT else ("train", "test"),
        shard=range(config["qa"]["shards"]),
    )
