"""Benchmark: how each rule's wall time and peak memory grow with the number of studies.

Renders one synthetic dataset of the largest size once (with the workflow's own synthesis
rules, in ``<root>/source``), then for each size takes its first studies as a data folder
of its own (``<root>/data_<n>``: the CSVs filtered, the study folders symlinked) and runs
the workflow on it as a user's dataset (``data_dir``) up to the severity models: header
parse, metadata, localizer stacks, one epoch of every localizer model, localizer inference,
coordinates, crops and one epoch of every severity model (two folds), so each stage's data
path is measured. Each rule's jobs write Snakemake benchmark files
(``results/benchmarks/...``); this script matches them to their rules, and prints per rule:
jobs, wall seconds (the sum over its jobs and the slowest job) and the peak RSS of its
largest job at every size, the fitted growth per 1,000 studies (least squares over the
sizes) and the projection to 2,000 studies.

    .venv/bin/python benchmarks/bench_scale.py --sizes 60 240 480 --root /tmp/spinepipe_scale

Sizes are split 80 / 20 into train and test studies. Jobs run two at a time (--cores 2),
as on a workstation; a job's wall time includes waiting for the other one's CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from spinepipe.synth.layout import study_ids

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_scale")

# The workflow up to the severity models, one short epoch per model.
RUN_CONFIG = {
    "folds": {"n": 2},
    "localize": {"point_model": {"epochs": 1}, "slice_model": {"epochs": 1}},
    "train": {"epochs": 1, "seeds": []},
}
# Targets named as files (Snakemake 9's --until leaves train_model's inputs unplanned here:
# "Out of jobs ready to be started", snakemake/snakemake#823).
TARGETS = ["results/localize/predictions_train.parquet", "results/localize/predictions_test.parquet",
           *(f"results/crops/{split}/summary.json" for split in ("train", "test", "train_predicted"))]
PROJECT_TO = 2000

# Each rule's benchmark path pattern (wildcards and their constraints), from the workflow.
LIST_BENCHMARKS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
snakefile, workdir, configfile = (Path(a) for a in sys.argv[1:4])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                            config_settings=ConfigSettings(configfiles=[configfile]),
                            snakefile=snakefile, workdir=workdir)._workflow
    out = {rule.name: {"pattern": str(rule.benchmark),
                       "constraints": {k: str(v) for k, v in rule.wildcard_constraints.items()}}
           for rule in workflow.rules if rule.benchmark}
print("BENCHMARKS=" + json.dumps(out))
"""


def snakemake(workdir: Path, *args: str) -> None:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--cores", "2", *args]
    log.info("%s", " ".join(command[3:]))
    with (workdir / "snakemake.log").open("a") as handle:
        subprocess.run(command, check=True, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT)


def render_source(root: Path, n_train: int, n_test: int) -> Path:
    """The largest dataset, rendered once by the workflow's synthesis rules (a source
    rendered earlier with at least as many studies is used as it is)."""
    workdir = root / "source"
    dataset = workdir / "results" / "synthetic"
    if all((dataset / f"{split}_series_descriptions.csv").is_file() and
           pl.read_csv(dataset / f"{split}_series_descriptions.csv")["study_id"].n_unique() >= n
           for split, n in (("train", n_train), ("test", n_test))):
        return dataset
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "size.yaml").write_text(yaml.safe_dump({"synthetic": {"n_train": n_train,
                                                                     "n_test": n_test}}))
    snakemake(workdir, "results/synthetic/train.csv", "results/synthetic/test_series_descriptions.csv",
              "--configfile", "size.yaml")
    return workdir / "results" / "synthetic"


def subset(source: Path, out: Path, seed: int, n_train: int, n_test: int) -> Path:
    """A data folder with the first ``n_train`` / ``n_test`` studies of ``source``."""
    keep = {"train": study_ids(seed, "train", n_train), "test": study_ids(seed, "test", n_test)}
    out.mkdir(parents=True, exist_ok=True)
    files = {"train.csv": "train", "train_label_coordinates.csv": "train",
             "train_series_descriptions.csv": "train", "test_series_descriptions.csv": "test"}
    for name, split in files.items():
        table = pl.read_csv(source / name, infer_schema=False)
        table.filter(pl.col("study_id").cast(pl.Int64).is_in(keep[split])).write_csv(out / name)
    sample = pl.read_csv(source / "sample_submission.csv")
    study = pl.col("row_id").str.extract(r"^(\d+)_").cast(pl.Int64)
    sample.filter(study.is_in(keep["test"])).write_csv(out / "sample_submission.csv")
    for split, ids in keep.items():
        (out / f"{split}_images").mkdir(exist_ok=True)
        for study_id in ids:
            link = out / f"{split}_images" / str(study_id)
            if not link.exists():
                link.symlink_to((source / f"{split}_images" / str(study_id)).resolve())
    return out


def benchmark_patterns(workdir: Path, configfile: Path) -> dict[str, re.Pattern]:
    result = subprocess.run([sys.executable, "-c", LIST_BENCHMARKS, str(REPO / "Snakefile"),
                             str(workdir), str(configfile)],
                            capture_output=True, text=True, check=True, cwd=workdir)
    listed = json.loads(next(line for line in result.stdout.splitlines()
                             if line.startswith("BENCHMARKS="))[len("BENCHMARKS="):])
    patterns = {}
    for rule, entry in listed.items():
        regex, last = "", 0
        # {name} or {name,constraint}; a constraint may hold braces itself (\d{4})
        for m in re.finditer(r"\{(\w+)(?:,((?:[^{}]|\{[^{}]*\})*))?\}", entry["pattern"]):
            regex += re.escape(entry["pattern"][last:m.start()])
            regex += f"(?:{m.group(2) or entry['constraints'].get(m.group(1), '[^/]+')})"
            last = m.end()
        patterns[rule] = re.compile(regex + re.escape(entry["pattern"][last:]) + "$")
    return patterns


def rule_figures(workdir: Path, patterns: dict[str, re.Pattern]) -> pl.DataFrame:
    """Per benchmark file: its rule, wall seconds and peak RSS (MB)."""
    rows = []
    for path in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        relative = str(path.relative_to(workdir))
        rules = [rule for rule, pattern in patterns.items() if pattern.match(relative)]
        if len(rules) != 1:
            log.warning("%s: matches rules %s; left out", relative, rules)
            continue
        table = pl.read_csv(path, separator="\t", null_values=["NA", "-"])
        row = table.row(-1, named=True)
        rows.append({"rule": rules[0], "file": relative, "seconds": float(row["s"]),
                     "max_rss_mb": float(row["max_rss"]) if row["max_rss"] is not None else None})
    return pl.DataFrame(rows, schema={"rule": pl.String, "file": pl.String, "seconds": pl.Float64,
                                      "max_rss_mb": pl.Float64})


def fit(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares line: (growth per 1,000 studies, value at PROJECT_TO studies)."""
    slope, intercept = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(slope * 1000), float(intercept + slope * PROJECT_TO)


def summarize(per_size: dict[int, pl.DataFrame]) -> list[dict]:
    sizes = sorted(per_size)
    by_rule: dict[str, dict] = {}
    for size in sizes:
        agg = per_size[size].group_by("rule").agg(
            jobs=pl.len(), total_s=pl.col("seconds").sum(), slowest_s=pl.col("seconds").max(),
            peak_rss_mb=pl.col("max_rss_mb").max())
        for r in agg.iter_rows(named=True):
            by_rule.setdefault(r["rule"], {})[size] = r
    out = []
    for rule, figures in sorted(by_rule.items()):
        if set(figures) != set(sizes):
            continue  # a rule that ran at some sizes only (nothing to fit)
        entry = {"rule": rule, "jobs": figures[sizes[-1]]["jobs"],
                 **{f"{key}@{size}": figures[size][key] for size in sizes
                    for key in ("total_s", "slowest_s", "peak_rss_mb")}}
        for key in ("total_s", "slowest_s", "peak_rss_mb"):
            growth, projected = fit(sizes, [figures[s][key] for s in sizes])
            entry[f"{key}_per_1000"], entry[f"{key}@{PROJECT_TO}"] = growth, projected
        out.append(entry)
    return out


# Snakemake's benchmark samples memory from half a second into a job: a rule whose every job
# ends sooner has no measured peak (its figures are printed as "-" and left out of the profile).
SAMPLED_AFTER_S = 1.0


def memory_sampled(row: dict) -> bool:
    return any(v >= SAMPLED_AFTER_S for k, v in row.items() if k.startswith("slowest_s@") and
               not k.endswith(f"@{PROJECT_TO}"))


def print_table(rows: list[dict], sizes: list[int], shards: int) -> None:
    head = (["rule", "jobs"] + [f"wall s @{s}" for s in sizes] + ["wall s /1000", f"wall s @{PROJECT_TO}"]
            + [f"peak MB @{s}" for s in sizes] + ["peak MB /1000", f"peak MB @{PROJECT_TO}"])
    print(f"\nPer rule: wall seconds summed over its jobs, and its largest job's peak RSS; "
          f"sizes {sizes} studies (80/20 train/test), {shards} shards per split")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = ([r["rule"], str(r["jobs"])] + [f"{r[f'total_s@{s}']:.1f}" for s in sizes]
                 + [f"{r['total_s_per_1000']:+.0f}", f"{r[f'total_s@{PROJECT_TO}']:.0f}"]
                 + ([f"{r[f'peak_rss_mb@{s}']:.0f}" for s in sizes]
                    + [f"{r['peak_rss_mb_per_1000']:+.0f}", f"{r[f'peak_rss_mb@{PROJECT_TO}']:.0f}"]
                    if memory_sampled(r) else ["-"] * (len(sizes) + 2)))
        print("| " + " | ".join(cells) + " |")


# Epochs the measured one-epoch training jobs stand for in the default config.
FULL_EPOCHS = {"train_localizer": ("localize", "point_model", "epochs"), "train_model": ("train", "epochs")}
MEMORY_HEADROOM, RUNTIME_HEADROOM = 1.5, 3.0
MIN_MEM_MB = 1000  # a job's Python with its imports, whatever it reads
MIN_RUNTIME_MIN = 15  # a cluster's shared file system and job start are slower than local disk


def profile_resources(rows: list[dict], config: dict) -> dict[str, dict[str, int]]:
    """Per rule, ``mem_mb`` and ``runtime`` (minutes) for the cluster profile: the projected
    peak RSS at PROJECT_TO studies times MEMORY_HEADROOM (at least the measured largest,
    rounded up to 500 MB, at least MIN_MEM_MB) and the projected slowest job times
    RUNTIME_HEADROOM (training: times the default config's epochs; at least MIN_RUNTIME_MIN).
    Rules with no sampled memory are left out."""
    out = {}
    for r in rows:
        if not memory_sampled(r):
            continue  # no measured peak: the profile keeps its own value
        peak = max(r[f"peak_rss_mb@{PROJECT_TO}"], *(v for k, v in r.items() if k.startswith("peak_rss_mb@")))
        seconds = max(r[f"slowest_s@{PROJECT_TO}"], 1.0)
        if r["rule"] in FULL_EPOCHS:
            node = config
            for key in FULL_EPOCHS[r["rule"]]:
                node = node[key]
            seconds *= node
        out[r["rule"]] = {"mem_mb": max(MIN_MEM_MB, int(np.ceil(peak * MEMORY_HEADROOM / 500) * 500)),
                          "runtime": max(MIN_RUNTIME_MIN, int(np.ceil(seconds * RUNTIME_HEADROOM / 60)))}
    return out


def print_profile(resources: dict[str, dict[str, int]]) -> None:
    print(f"\nSuggested profiles/slurm set-resources at {PROJECT_TO} studies "
          f"(memory x{MEMORY_HEADROOM}, runtime x{RUNTIME_HEADROOM}, training at full epochs):")
    for rule, values in resources.items():
        print(f"  {rule}: {{mem_mb: {values['mem_mb']}, runtime: {values['runtime']}}}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 240, 480])
    parser.add_argument("--root", type=Path, default=Path("/tmp/spinepipe_scale"))
    parser.add_argument("--seed", type=int, default=2024, help="the config's master seed")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--from-json", type=Path,
                        help="print the tables of an earlier run's --out file (runs nothing)")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print_table(saved["rules"], saved["sizes"], config["metadata"]["shards"])
        print_profile(profile_resources(saved["rules"], config))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sizes = sorted(args.sizes)
    split = {n: (round(n * 0.8), n - round(n * 0.8)) for n in sizes}
    start = time.perf_counter()
    source = render_source(args.root, *split[sizes[-1]])
    log.info("source dataset rendered in %.0f s", time.perf_counter() - start)
    per_size = {}
    for n in sizes:
        data = subset(source, args.root / f"data_{n}", args.seed, *split[n])
        workdir = args.root / f"run_{n}"
        workdir.mkdir(parents=True, exist_ok=True)
        configfile = workdir / "scale.yaml"
        configfile.write_text(yaml.safe_dump({**RUN_CONFIG, "data_dir": str(data)}))
        begin = time.perf_counter()
        models = [f"results/train/models/{family}_fold{fold}.pt" for family in config["train"]["families"]
                  for fold in range(RUN_CONFIG["folds"]["n"])]
        snakemake(workdir, *TARGETS, *models, "--configfile", str(configfile))
        log.info("%d studies: %.0f s", n, time.perf_counter() - begin)
        per_size[n] = rule_figures(workdir, benchmark_patterns(workdir, configfile))
    rows = summarize(per_size)
    print_table(rows, sizes, config["metadata"]["shards"])
    print_profile(profile_resources(rows, config))
    if args.out:
        args.out.write_text(json.dumps({"sizes": sizes, "split": split, "rules": rows}, indent=2))


if __name__ == "__main__":
    main()
