"""Several training seeds (train.seeds): the spread summary, the planned seed jobs, and the
master seed's rules untouched by the list of further seeds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY
from workflow_runs import planned_jobs, snakemake

from spinepipe.classify.seeds import headline_figures, summarize_seeds, summary_line

FAMILIES = ("spinal", "foraminal", "subarticular")


def _cv(score, annotated, test=None, spinal=None):
    cv = {"cv_score": score, "cv_score_annotated_points": annotated, "prior_score": 1.06,
          "cv_terms": {"spinal": spinal if spinal is not None else score, "foraminal": 0.2},
          "per_level": {"l1_l2": 0.1}, "n_rows": 1200}
    if test is not None:
        cv.update(test_score=test, test_prior_score=1.16, test_terms={"spinal": test},
                  test_floor_score=0.3, test_gap_closed=(1.16 - test) / (1.16 - 0.3))
    return cv


def test_summary_gives_mean_sample_sd_min_max_and_values_per_seed():
    runs = {2024: _cv(0.30, 0.20, test=0.25), 7: _cv(0.34, 0.22, test=0.27),
            11: _cv(0.32, 0.24, test=0.29)}
    summary = summarize_seeds(runs, master_seed=2024)
    assert summary["master_seed"] == 2024 and summary["seeds"] == [2024, 7, 11]
    cv = summary["figures"]["cv_score"]
    assert cv["n"] == 3 and cv["missing"] == []
    assert cv["mean"] == pytest.approx(0.32)
    assert cv["sd"] == pytest.approx(0.02)  # sample sd (ddof=1): sqrt((0.02^2 * 2) / 2)
    assert (cv["min"], cv["max"]) == (pytest.approx(0.30), pytest.approx(0.34))
    assert cv["values"] == {"2024": 0.30, "7": 0.34, "11": 0.32}
    assert summary["figures"]["cv_score_annotated_points"]["mean"] == pytest.approx(0.22)
    assert summary["figures"]["test_score"]["sd"] == pytest.approx(0.02)
    assert summary["figures"]["cv_terms.foraminal"]["sd"] == pytest.approx(0.0)
    assert summary["figures"]["test_terms.spinal"]["n"] == 3
    assert summary["figures"]["test_gap_closed"]["mean"] == pytest.approx((1.16 - 0.27) / 0.86)
    # neither the prior nor the floor (the same for every seed), nor the per-level breakdown
    assert not ({"prior_score", "test_prior_score", "test_floor_score", "per_level.l1_l2", "n_rows"}
                & summary["figures"].keys())
    json.dumps(summary, allow_nan=False)  # plain JSON: string keys, no NaN
    line = summary_line(summary)
    assert "3 seeds" in line and "cv_score 0.3200 +/- 0.0200" in line and "(n=3)" in line


def test_a_figure_missing_from_a_seed_is_summarized_over_the_seeds_that_have_it():
    """Decision: a figure absent from a run (no test labels), or there but not a finite
    number, is summarized over the runs that have it; `n` says how many and `missing` names
    the others. It never counts as a value and never drops the seed's other figures."""
    runs = {2024: _cv(0.30, 0.20, test=0.25, spinal=0.5), 7: _cv(0.34, 0.22, spinal=float("nan")),
            11: _cv(0.32, 0.24, test=0.29, spinal=0.7)}
    figures = summarize_seeds(runs, master_seed=2024)["figures"]
    test = figures["test_score"]
    assert test["n"] == 2 and test["missing"] == [7]
    assert test["mean"] == pytest.approx(0.27) and test["sd"] == pytest.approx(math.sqrt(0.0008))
    assert test["values"] == {"2024": 0.25, "11": 0.29}
    spinal = figures["cv_terms.spinal"]
    assert spinal["n"] == 2 and spinal["missing"] == [7] and spinal["mean"] == pytest.approx(0.6)
    assert figures["cv_score"]["n"] == 3  # the seed's other figures still count
    # a figure only one run has: no spread
    single = summarize_seeds({1: _cv(0.3, 0.2, test=0.25), 2: _cv(0.3, 0.2)})["figures"]["test_score"]
    assert single["n"] == 1 and single["sd"] is None and single["mean"] == pytest.approx(0.25)


def test_headline_figures_flatten_the_groups():
    figures = headline_figures(_cv(0.3, 0.2, test=0.25))
    assert figures["cv_terms.spinal"] == 0.3 and figures["test_terms.spinal"] == 0.25
    assert headline_figures({"cv_score": None, "cv_terms": {"spinal": "x"}}) == {
        "cv_score": None, "cv_terms.spinal": None}
    with pytest.raises(ValueError):
        summarize_seeds({})


@pytest.mark.slow
def test_dry_run_plans_every_seed_job_and_the_summary(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    folds = TINY["folds"]["n"]
    # the README's command line: nested --config values arrive as strings ('7'), which the
    # schema accepts for seeds; --config deep-merges with the config files (tiny's train.epochs stays)
    result = snakemake(tmp_path, "--configfile", "tiny.yaml", "--config", "train={seeds: [7, 11]}",
                       "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    per_seed = {"train_parent_run_seed": 1, "train_model_seed": 3 * folds, "predict_oof_seed": 3 * folds,
                "cv_eval_seed": 1, "predict_test_seed": 3 * folds, "submission_seed": 1,
                "cv_report_seed": 1}
    for rule, count in per_seed.items():
        assert jobs.get(rule) == 2 * count, (rule, jobs)
    assert jobs.get("seeds_summary") == 1 and jobs.get("train_model") == 3 * folds, jobs
    for seed in (7, 11):
        for family in FAMILIES:
            for fold in range(folds):
                assert f"results/seeds/{seed}/train/models/{family}_fold{fold}.pt" in result.stdout
                assert f"wildcards: seed={seed}, family={family}, fold={fold}" in result.stdout
        assert f"results/seeds/{seed}/eval/cv.json" in result.stdout
        assert f"results/seeds/{seed}/train/parent_run.json" in result.stdout
    # the same run without further seeds plans none of them
    result = snakemake(tmp_path, "--configfile", "tiny.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    base = planned_jobs(result.stdout)
    assert not {rule for rule in base if rule.endswith("_seed") or rule == "seeds_summary"}, base
    assert sum(jobs.values()) == sum(base.values()) + 2 * sum(per_seed.values()) + 1


@pytest.mark.slow
def test_the_master_seed_or_a_repeated_seed_is_refused(tmp_path):
    result = snakemake(tmp_path, "--config", "train={seeds: [2024]}", "--dry-run")
    assert result.returncode != 0 and "master seed" in result.stdout + result.stderr
    result = snakemake(tmp_path, "--config", "train={seeds: [-3]}", "--dry-run")
    assert result.returncode != 0 and "seeds" in result.stdout + result.stderr


# Loads the workflow as `snakemake` does (Snakefile, config.yaml merged with the given
# --config, validation, preflight) and prints every rule's params that are values (callables,
# such as the checkpoint path of train_model, need a job's wildcards). Snakemake has no
# command that prints params, so this goes through the API's loaded workflow (its
# `_workflow` attribute: snakemake is pinned in requirements.txt).
RULE_PARAMS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
snakefile, workdir, config = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                            config_settings=ConfigSettings(config=config),
                            snakefile=snakefile, workdir=workdir)._workflow
    params = {rule.name: {name: value for name, value in rule.params.items() if not callable(value)}
              for rule in workflow.rules}
print("PARAMS " + json.dumps(params, sort_keys=True, default=repr))
"""


def rule_params(workdir: Path, config: dict) -> dict[str, dict]:
    result = subprocess.run([sys.executable, "-c", RULE_PARAMS, str(REPO / "Snakefile"), str(workdir),
                             json.dumps(config)], capture_output=True, text=True, timeout=300,
                            cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("PARAMS "))
    return json.loads(line[len("PARAMS "):])


def _mentions_seeds(value) -> bool:
    if isinstance(value, dict):
        return "seeds" in value or any(_mentions_seeds(v) for v in value.values())
    if isinstance(value, list):
        return any(_mentions_seeds(v) for v in value)
    return False


@pytest.mark.slow
def test_further_seeds_leave_the_master_seeds_params_unchanged(tmp_path):
    """Params are a rerun trigger: if `train.seeds` reached the params of train_model (through
    TRAIN_PARAMS), of train_parent_run or of cv_eval (its `cfg`), listing a seed would retrain
    and re-evaluate the master seed's models. A recorded run to diff against with
    --list-params-changes costs a whole training, so this compares the params every rule is
    declared with, as the workflow loads them, with and without seeds: the master seed's
    rules (and the seed copies, which only swap paths and the seed) must be identical, and
    no rule but seeds_summary may carry a `seeds` key. Leaking `seeds` into TRAIN_PARAMS, or
    passing config["train"] whole again, fails both checks."""
    without = rule_params(tmp_path, {})
    with_seeds = rule_params(tmp_path, {"train": {"seeds": [7, 11]}})
    assert without.keys() == with_seeds.keys()
    assert with_seeds["train_model"]["cfg"]["epochs"] == 12  # the real TRAIN_PARAMS were read
    for rule in without:
        if rule == "seeds_summary":
            assert with_seeds[rule]["seeds"] == [7, 11]
            continue
        assert with_seeds[rule] == without[rule], rule
        assert not _mentions_seeds(with_seeds[rule]), rule
