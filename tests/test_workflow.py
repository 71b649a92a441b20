"""The Snakemake workflow end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import REPO, TINY, make_config
from workflow_runs import planned_jobs, snakemake

from spinepipe import checkpoints
from spinepipe.classify.held_out import check_no_leak
from spinepipe.dataset import read_labels
from spinepipe.metric import labels_to_long
from spinepipe.synth.layout import shard_indices, study_ids


@pytest.fixture(scope="module")
def workflow_run(tiny_run):
    return tiny_run


@pytest.mark.slow
def test_pipeline_writes_dataset_and_reports(workflow_run):
    workflow_run, _ = workflow_run
    results = workflow_run / "results"
    for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
                 "test_series_descriptions.csv", "sample_submission.csv", "test_labels.csv",
                 "level_centers.csv"):
        assert (results / "synthetic" / name).is_file(), name
    summary = json.loads((results / "dataset" / "summary.json").read_text())
    assert summary["train_studies"] == TINY["synthetic"]["n_train"]
    assert summary["submission_rows"] == 25 * TINY["synthetic"]["n_test"]
    assert summary["train_series_folders_missing"] == 0
    learn = json.loads((results / "synthetic" / "learnability.json").read_text())
    assert {"model_score", "prior_score"} <= learn.keys()
    coordinates = pl.read_parquet(results / "localize" / "coordinates.parquet")
    test_ids = pl.read_csv(results / "synthetic" / "test_labels.csv")["study_id"].to_list()
    predicted = coordinates.filter(pl.col("study_id").is_in(test_ids))
    assert (predicted["source"] == "predicted").all() and predicted.height > 0
    assert set(coordinates["source"]) == {"annotated", "predicted"}
    localization = json.loads((results / "eval" / "localization.json").read_text())
    assert {"sagittal_t2", "sagittal_t1", "axial_t2"} <= localization["test"].keys()
    assert (results / "localize" / "label_noise.png").stat().st_size > 0
    # the tracking store holds the configured experiment and its pipeline run
    import mlflow

    config = make_config()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(config["mlflow"]["experiment"])
    assert experiment is not None
    names = {run.info.run_name for run in client.search_runs([experiment.experiment_id])}
    assert "pipeline" in names, names
    # a rule's log says what its job did: every study of the shard rendered
    log = (workflow_run / "logs" / "synthesize" / "train_0000.log").read_text()
    ids = study_ids(config["seed"], "train", TINY["synthetic"]["n_train"])
    indices = shard_indices(config["seed"], "train", TINY["synthetic"]["n_train"],
                            config["metadata"]["shards"])[0]
    assert indices
    for index in indices:
        assert f"train study {ids[index]} (index {index}) written" in log, log[-2000:]
    # and its benchmark file one row of resource figures
    benchmark = pl.read_csv(results / "benchmarks" / "synthesize" / "train_0000.tsv", separator="\t")
    assert benchmark.height == 1 and benchmark["s"][0] > 0 and benchmark["max_rss"][0] > 0, benchmark


@pytest.mark.slow
def test_damaged_test_studies_still_get_a_complete_submission(workflow_run):
    workflow_run, damaged = workflow_run
    results = workflow_run / "results"
    sample = pl.read_csv(results / "synthetic" / "sample_submission.csv")
    submission = pl.read_csv(results / "submission.csv")
    assert submission.columns == sample.columns
    assert submission["row_id"].to_list() == sample["row_id"].to_list()
    probs = submission.select("normal_mild", "moderate", "severe").to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    degraded = pl.read_csv(results / "eval" / "degraded_rows.csv")
    reasons = dict(zip(degraded["row_id"], degraded["reason"]))
    fallbacks = dict(zip(degraded["row_id"], degraded["fallback"]))
    no_axial, corrupt = damaged["no_axial"], damaged["corrupt_t1"]
    for level in ("l1_l2", "l3_l4", "l5_s1"):
        for side in ("left", "right"):
            row = f"{no_axial}_{side}_subarticular_stenosis_{level}"
            # graded from the Sagittal T2 recess view, and the row says what it lacked
            assert fallbacks[row] == "model (other series)" and "axial" in reasons[row].lower()
            row = f"{corrupt}_{side}_neural_foraminal_narrowing_{level}"
            assert row in reasons and "files unusable" in reasons[row]
        assert fallbacks[f"{no_axial}_spinal_canal_stenosis_{level}"] == "model (other series)"
    cv = json.loads((results / "eval" / "cv.json").read_text())
    assert {"cv_score", "prior_score", "test_score", "test_prior_score"} <= cv.keys()
    assert all(np.isfinite([cv["cv_score"], cv["prior_score"], cv["test_score"]]))
    # each split's Bayes floor (from the true severities) and the share of the gap closed
    for split in ("", "test_"):
        floor, prior = cv[f"{split}floor_score"], cv[f"{split}prior_score"]
        assert 0 < floor < prior, split
        score = cv["cv_score" if not split else "test_score"]
        assert cv[f"{split}gap_closed"] == pytest.approx((prior - score) / (prior - floor)), split
    assert (results / "eval" / "confusion_matrices.png").stat().st_size > 0
    assert len(list((results / "train" / "models").glob("*.pt"))) == 3 * TINY["folds"]["n"]
    # resume checkpoints serve killed jobs only: finished jobs leave none behind
    assert not list((results / "train" / "checkpoints").glob("*.pt"))


@pytest.mark.slow
def test_end_to_end_cv_grades_every_train_row_with_the_fold_that_held_it_out(workflow_run):
    workflow_run, _ = workflow_run
    results = workflow_run / "results"
    cv = json.loads((results / "eval" / "cv.json").read_text())
    terms = {"spinal", "foraminal", "subarticular", "any_severe_spinal"}
    for suffix in ("", "_annotated_points"):  # end to end (the headline), classifier only
        assert np.isfinite(cv[f"cv_score{suffix}"]), suffix
        assert set(cv[f"cv_terms{suffix}"]) == terms, suffix
        assert cv[f"per_condition{suffix}"] and cv[f"per_level{suffix}"], suffix
    assert cv["localization_cost"] == pytest.approx(cv["cv_score"] - cv["cv_score_annotated_points"])
    # every train study x 25 rows, each graded by the fold that held its study out
    labels = read_labels(results / "synthetic" / "train.csv")
    folds = pl.read_parquet(results / "folds.parquet")
    probs = pl.read_csv(results / "eval" / "oof_end_to_end.csv")
    assert probs["row_id"].to_list() == labels_to_long(labels)["row_id"].to_list()
    assert probs.height == 25 * TINY["synthetic"]["n_train"] == cv["n_rows"]
    fold_of = dict(folds.select("study_id", "fold").iter_rows())
    assert probs["fold"].to_list() == [fold_of[int(r.split("_")[0])] for r in probs["row_id"]]
    assert np.allclose(probs.select("normal_mild", "moderate", "severe").to_numpy().sum(1), 1.0)
    degraded = pl.read_csv(results / "eval" / "degraded_rows_oof.csv")
    assert set(degraded["row_id"]) <= set(probs["row_id"])
    assert cv["end_to_end"]["rows_on_prior"] == (degraded["fallback"] == "prior").sum()
    # the crops were cut at the out-of-fold predicted points only
    crops = pl.read_parquet(results / "crops" / "train_predicted" / "index.parquet")
    assert set(crops["study_id"]) == set(labels["study_id"])
    assert "annotated" not in set(crops["source"].drop_nulls())
    # predict_oof: each fold model graded exactly the studies its fold held out, none it saw
    frames, train_studies = [], {}
    for family in ("spinal", "foraminal", "subarticular"):
        for fold in range(TINY["folds"]["n"]):
            frame = pl.read_parquet(results / "predict_oof" / f"{family}_fold{fold}.parquet")
            held_out = set(folds.filter(pl.col("fold") == fold)["study_id"])
            assert set(frame["study_id"]) == held_out and (frame["fold"] == fold).all()
            meta = checkpoints.load(results / "train" / "models" / f"{family}_fold{fold}.pt")["meta"]
            assert not held_out & set(meta["train_studies"])
            train_studies[(family, fold)] = meta["train_studies"]
            frames.append(frame)
    check_no_leak(pl.concat(frames), folds, train_studies)


@pytest.mark.slow
def test_every_test_study_and_every_gallery_case_gets_a_sheet(workflow_run):
    """results/qa: a sheet per test study (the damaged ones included), the sampled train
    studies and every train study a gallery shows; four galleries with their cases; all of
    it logged to qa_mlflow's own MLflow run `qa`."""
    workflow_run, damaged = workflow_run
    results = workflow_run / "results"
    sheets = {int(p.stem) for p in (results / "qa" / "studies").glob("*.png")}
    test_ids = set(pl.read_csv(results / "synthetic" / "test_labels.csv")["study_id"].to_list())
    assert test_ids <= sheets and set(damaged.values()) <= sheets
    train_listed = {int(s) for s in (results / "qa" / "train_studies.txt").read_text().split()}
    assert sheets == test_ids | train_listed
    cases = pl.read_csv(results / "qa" / "cases.csv")
    shown = set(cases.filter(pl.col("gallery") != "degraded")["study_id"].to_list())
    assert shown <= train_listed
    degraded = pl.read_csv(results / "eval" / "degraded_rows.csv")
    assert cases.filter(pl.col("gallery") == "degraded").height == degraded.height > 0
    galleries = results / "qa" / "galleries"
    for gallery in ("localization_errors", "label_noise", "confident_wrong", "degraded"):
        assert (galleries / f"{gallery}.png").stat().st_size > 0, gallery
        # each gallery's table lists the cases it shows (the same rows as cases.csv's)
        listed = pl.read_csv(galleries / f"{gallery}.csv", infer_schema=False)
        expected = cases.filter(pl.col("gallery") == gallery).cast(pl.String)
        assert listed.equals(expected), (gallery, listed, expected)
    import mlflow

    tracked = json.loads((results / "qa" / "mlflow.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    run = client.get_run(tracked["run_id"])  # qa_mlflow's own run, under the root
    assert (run.info.run_name, run.data.tags["snakemake.rule"]) == ("qa", "qa_mlflow")
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.run_name == "pipeline"
    assert {k: len(v) for k, v in tracked["artifacts"].items()} == {
        "qa/studies": len(sheets), "qa/galleries": len([p for p in galleries.iterdir() if not p.name.startswith(".")])}
    logged = {f.path for f in client.list_artifacts(tracked["run_id"], "qa/studies")}
    assert logged == {f"qa/studies/{s}.png" for s in sheets}
    logged = {f.path for f in client.list_artifacts(tracked["run_id"], "qa/galleries")}
    assert "qa/galleries/degraded.png" in logged and "qa/galleries/degraded.csv" in logged


def _tracked_runs(results: Path):
    """The tiny pipeline's MLflow client and every run of its experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spinepipe")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


# Run name -> the one rule whose job creates (and terminates) that run (README "Experiment
# tracking"); the root run `pipeline` is created by whichever of them needs it first.
RUN_CREATORS = {
    r"localize/(point|slice)/\w+/fold\d+": "train_localizer",
    r"evaluate/localization": "localize_eval",
    r"qa": "qa_mlflow",
    r"train/seed\d+": "train_parent_run",
    r"train/seed\d+/\w+/fold\d+": "train_model",
    r"evaluate/cv/seed\d+": "cv_eval",
    r"evaluate/test/seed\d+": "cv_report",
    r"register/seed\d+": "register_model",
}


def run_creator(name: str) -> str | None:
    rules = [rule for pattern, rule in RUN_CREATORS.items() if re.fullmatch(pattern, name)]
    assert len(rules) <= 1, (name, rules)
    return rules[0] if rules else None


@pytest.mark.slow
def test_mlflow_runs_form_one_tree_per_configuration(workflow_run):
    """A fresh run's store has exactly one root run (the configuration's, tagged with its
    hash); the localizer, training, evaluation, QA and registration runs nest under it with
    names that sort, each seed's evaluation and registration under its train run; every run
    names its rule as source and carries the checkout's git commit."""
    workflow_run, _ = workflow_run
    results = workflow_run / "results"
    client, runs = _tracked_runs(results)
    by_id = {r.info.run_id: r for r in runs}
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == len(runs), sorted(r.info.run_name for r in runs)  # no duplicates
    roots = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in roots] == ["pipeline"], [r.info.run_name for r in roots]
    root = roots[0]
    from spinepipe.tracking.context import config_hash

    assert root.data.tags["spinepipe.config_hash"] == config_hash(make_config())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()

    def path(run) -> list[str]:  # run names from the root down
        names = [run.info.run_name]
        while "mlflow.parentRunId" in run.data.tags:
            run = by_id[run.data.tags["mlflow.parentRunId"]]
            names.insert(0, run.info.run_name)
        return names

    folds = TINY["folds"]["n"]
    localizers = sorted(name for name in by_name if name.startswith("localize/"))
    assert len(localizers) == len(list((results / "localize" / "models").glob("*.pt")))
    assert "localize/point/sagittal_t1/fold0" in localizers
    severity = sorted(f"train/seed2024/{family}/fold{k}" for family in
                      ("spinal", "foraminal", "subarticular") for k in range(folds))
    seed_children = ["evaluate/cv/seed2024", "evaluate/test/seed2024", "register/seed2024", *severity]
    assert sorted(by_name) == sorted(["pipeline", *localizers, "evaluate/localization", "qa",
                                      "train/seed2024", *seed_children])
    for run in runs:
        names = path(run)
        expected = ["pipeline", "train/seed2024"] if run.info.run_name in seed_children else ["pipeline"]
        if run is not root:
            assert names[:-1] == expected, names
        assert run.data.tags.get("mlflow.source.git.commit") == commit, run.info.run_name
        assert run.data.tags["mlflow.source.name"].startswith("snakemake rule "), run.data.tags
    parent_run = json.loads((results / "train" / "parent_run.json").read_text())
    assert parent_run == {"run_id": by_name["train/seed2024"].info.run_id,
                          "run_name": "train/seed2024", "seed": 2024}
    # the train run holds the seed's settings; the figures are in the runs that computed them
    train_run = by_name["train/seed2024"]
    assert train_run.data.params["seed"] == "2024" and "train.epochs" in train_run.data.params
    assert train_run.data.metrics == {}
    cv_oof = json.loads((results / "eval" / "cv_oof.json").read_text())
    cv = json.loads((results / "eval" / "cv.json").read_text())
    cv_run, test_run = by_name["evaluate/cv/seed2024"].data, by_name["evaluate/test/seed2024"].data
    assert cv_run.metrics["cv_score"] == pytest.approx(cv_oof["cv_score"])
    assert cv_run.metrics["cv_score_annotated_points"] == pytest.approx(cv_oof["cv_score_annotated_points"])
    assert {"cv_oof.json", "confusion_matrices.png", "calibration.png", "degraded_rows_oof.csv"} <= {
        f.path for f in client.list_artifacts(by_name["evaluate/cv/seed2024"].info.run_id)}
    for key in ("cv_score", "cv_score_annotated_points", "test_score", "test_prior_score"):
        assert test_run.metrics[key] == pytest.approx(cv[key]), key  # one row compares both
    assert "test_score" not in cv_run.metrics
    # the data each run trained and was evaluated on, as MLflow datasets
    records = {split: json.loads((results / "tracking" / f"datasets_{split}.json").read_text())[split]
               for split in ("train", "test")}
    assert records["train"]["profile"]["studies"] == TINY["synthetic"]["n_train"]
    assert records["test"]["profile"]["studies"] == TINY["synthetic"]["n_test"]

    def inputs(run) -> dict[str, tuple[str, str]]:  # context -> (name, digest)
        return {next(t.value for t in d.tags if t.key == "mlflow.data.context"):
                (d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}

    train = (records["train"]["name"], records["train"]["digest"])
    for run in runs:
        name = run.info.run_name
        if name.startswith("localize/") or name in severity:
            assert inputs(run) == {"training": train}, (name, inputs(run))
    # the train run holds the train split only (a new test study reruns no training); the
    # test split is the test evaluation's input
    assert inputs(train_run) == {"training": train}, inputs(train_run)
    test_evaluation = by_name["evaluate/test/seed2024"]
    assert inputs(test_evaluation) == {"evaluation": (records["test"]["name"], records["test"]["digest"])}


@pytest.mark.slow
def test_every_mlflow_run_is_opened_and_closed_by_one_job(workflow_run):
    """Each run is created and terminated by the job of one rule (its tag snakemake.rule),
    and nothing reaches it afterwards: every run is FINISHED; every metric entry and every
    artifact file of a run was written between its start and its end; and a parent run
    ended before any of its children started, so no later job (the children's, or any job
    after them) reopened it to log into it."""
    from urllib.parse import unquote, urlparse

    workflow_run, _ = workflow_run
    client, runs = _tracked_runs(workflow_run / "results")
    by_id = {r.info.run_id: r for r in runs}
    creators = set(RUN_CREATORS.values())
    artifact_files = 0
    for run in runs:
        info, name, rule = run.info, run.info.run_name, run.data.tags.get("snakemake.rule")
        assert info.status == "FINISHED", (name, info.status)
        assert info.start_time <= info.end_time, name
        expected = run_creator(name)
        if name == "pipeline":  # created by the first job that needed it, already terminated
            assert rule in creators and info.end_time == info.start_time, (name, rule)
        else:
            assert expected is not None and rule == expected, (name, rule, expected)
        assert run.data.tags["mlflow.source.name"] == f"snakemake rule {rule}", name
        for key in run.data.metrics:
            for entry in client.get_metric_history(info.run_id, key):
                assert info.start_time <= entry.timestamp <= info.end_time, (
                    f"{name}: metric {key} logged at {entry.timestamp}, outside the run "
                    f"({info.start_time} to {info.end_time})")
        artifacts = urlparse(info.artifact_uri)
        assert artifacts.scheme in ("", "file"), info.artifact_uri  # the tiny run's local store
        folder = Path(unquote(artifacts.path))
        folder = folder if folder.is_absolute() else workflow_run / folder
        if folder.is_dir():
            for file in (f for f in folder.rglob("*") if f.is_file()):
                artifact_files += 1
                written = file.stat().st_ctime_ns // 1_000_000
                assert written <= info.end_time + 5, (  # a coarse file clock: a few ms
                    f"{name}: artifact {file.relative_to(folder)} written at {written}, "
                    f"after the run ended at {info.end_time}")
        parent = by_id.get(run.data.tags.get("mlflow.parentRunId"))
        if parent is not None:
            assert parent.info.end_time <= info.start_time, (
                f"{parent.info.run_name} ended at {parent.info.end_time}, after its child "
                f"{name} started at {info.start_time}")
    assert artifact_files > 0, "no artifact file found: the artifact check saw nothing"


def new_studies_folder(results: Path, target: Path) -> Path:
    """A folder as the hidden test set or a hospital gives it: the test studies' images (the
    damaged ones included) and their series CSV; no train file, no sample submission."""
    shutil.copytree(results / "synthetic" / "test_images", target / "test_images")
    shutil.copy(results / "synthetic" / "test_series_descriptions.csv", target)
    return target


def assert_same_grades(graded: pl.DataFrame, reference: pl.DataFrame, atol: float) -> None:
    assert sorted(graded["row_id"].to_list()) == sorted(reference["row_id"].to_list())
    joined = reference.join(graded, on="row_id", suffix="_graded")
    for column in ("normal_mild", "moderate", "severe"):
        difference = (joined[column] - joined[f"{column}_graded"]).abs().max()
        assert difference <= atol, (column, difference)


def same_degraded_rows(results: Path, reference: Path) -> None:
    mine = pl.read_csv(results / "eval" / "degraded_rows.csv").sort("row_id")
    theirs = pl.read_csv(reference / "eval" / "degraded_rows.csv").sort("row_id")
    assert mine.height > 0 and mine.equals(theirs), (mine, theirs)


@pytest.fixture(scope="module")
def predict_run(workflow_run, tmp_path_factory):
    """The tiny run's bundle grading a folder holding only its test studies, with the same
    Snakefile in predict-only mode: (training run, studies folder, predict run folder, the
    jobs the dry run planned)."""
    run, _ = workflow_run
    base = tmp_path_factory.mktemp("predict")
    folder = new_studies_folder(run / "results", base / "studies")
    workdir = base / "run"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (workdir / "predict.yaml").write_text(yaml.safe_dump(
        {"data_dir": str(folder), "predict": {"bundle": str(run / "results" / "bundle")}}))
    dry = snakemake(workdir, "--configfile", "tiny.yaml", "predict.yaml", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    result = snakemake(workdir, "--configfile", "tiny.yaml", "predict.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return run, folder, workdir, planned_jobs(dry.stdout)


@pytest.mark.slow
def test_a_bundle_grades_new_studies_as_the_training_run_did(predict_run):
    """Predict-only: only inference is planned (no training rule; no train CSV exists to be
    read), and the submission and degraded rows equal the training run's for its test
    studies; the bundle holds every fold model with its ONNX export, and nothing of the
    training data but the priors."""
    from test_code_inputs import PREDICT_RULES

    run, folder, workdir, planned = predict_run
    assert set(planned) == {*PREDICT_RULES, "all"}, planned
    assert not list(folder.glob("train*")) and not (folder / "sample_submission.csv").exists()
    results = workdir / "results"
    assert_same_grades(pl.read_csv(results / "submission.csv"), pl.read_csv(run / "results" / "submission.csv"),
                       atol=1e-5)
    same_degraded_rows(results, run / "results")
    tests = pl.read_csv(folder / "test_series_descriptions.csv")["study_id"].unique().to_list()
    assert sorted(int(p.stem) for p in (results / "qa" / "studies").glob("*.png")) == sorted(tests)
    bundle = run / "results" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    folds = TINY["folds"]["n"]
    # a point model per series type and fold; no slice model (every slice method is geometric)
    assert sorted(Path(m).stem for m in manifest["localizers"]) == sorted(
        f"point_{task}_fold{fold}" for task in ("sagittal_t2", "sagittal_t1", "axial_t2") for fold in range(folds))
    assert len(manifest["severity_models"]) == 3 * folds
    for model in manifest["localizers"] + manifest["severity_models"]:
        assert {model, str(Path(model).with_suffix(".onnx"))} <= manifest["files"].keys()
    meta = checkpoints.load(bundle / manifest["severity_models"][0])["meta"]
    assert "train_studies" not in meta and "history" not in meta
    card = (bundle / "MODEL_CARD.md").read_text()
    cv = json.loads((run / "results" / "eval" / "cv.json").read_text())
    assert f"{cv['cv_score']:.4f}" in card and f"{cv['test_score']:.4f}" in card and "synthetic" in card


@pytest.mark.slow
def test_a_registered_bundle_grades_with_onnxruntime(predict_run):
    """predict.bundle: models:/<name>/<version> (fetched from the training run's registry)
    and predict.runtime: onnx give the training run's submission within 1e-4."""
    run, _, workdir, _ = predict_run
    record = json.loads((run / "results" / "tracking" / "registered_model.json").read_text())
    assert "error" not in record, record
    (workdir / "registry.yaml").write_text(yaml.safe_dump(
        {"predict": {"bundle": record["uri"], "runtime": "onnx"},
         "mlflow": {"tracking_uri": f"sqlite:///{run / 'results' / 'mlflow.db'}"}}))
    result = snakemake(workdir, "--configfile", "tiny.yaml", "predict.yaml", "registry.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    results = workdir / "results"
    assert (results / "bundles" / f"{record['name']}-v{record['version']}" / "artifacts" / "bundle"
            / "manifest.json").is_file()
    assert "runtime onnx" in (workdir / "logs" / "predict" / "spinal_fold0.log").read_text()
    assert_same_grades(pl.read_csv(results / "submission.csv"), pl.read_csv(run / "results" / "submission.csv"),
                       atol=1e-4)
    same_degraded_rows(results, run / "results")


@pytest.mark.slow
def test_a_bundle_or_folder_that_cannot_be_used_stops_the_run_at_its_start(predict_run, tmp_path):
    """An altered bundle file, and a folder without studies: the workflow stops before any
    job with a message naming the problem (every refusal: tests/test_bundle.py)."""
    run, folder, workdir, _ = predict_run
    bundle = run / "results" / "bundle"
    altered = shutil.copytree(bundle, tmp_path / "altered")
    onnx = altered / "severity" / "spinal_fold0.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    empty = tmp_path / "empty"
    (empty / "test_images").mkdir(parents=True)
    (empty / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
    cases = {"altered": (altered, folder, "severity/spinal_fold0.onnx: altered"),
             "no_studies": (bundle, empty, "no studies to grade")}
    for name, (path, data_dir, message) in cases.items():
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump({"data_dir": str(data_dir),
                                                              "predict": {"bundle": str(path)}}))
        result = snakemake(workdir, "--configfile", "tiny.yaml", f"{name}.yaml", "--dry-run")
        output = result.stdout + result.stderr
        assert result.returncode != 0 and message in output, (name, output[-2000:])
        assert "Job stats" not in output, (name, "jobs were planned")


@pytest.mark.slow
def test_registered_bundle_grades_a_folder_of_dicom_through_mlflow(predict_run):
    """models:/<name>/<version> loads back with mlflow.pyfunc and, given a folder of studies
    (its input is DICOM), grades them in one process as the workflow did, a study that
    sample_submission.csv names but that has no images on the prior; the version carries
    the run's scores; every fold run has its own logged model."""
    import mlflow
    import pandas as pd

    from spinepipe.metric import priors_for_rows

    run, folder, _, _ = predict_run
    results = run / "results"
    record = json.loads((results / "tracking" / "registered_model.json").read_text())
    assert "error" not in record, record
    uri = f"sqlite:///{results / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(record["uri"])
    with_sample = shutil.copytree(folder, folder.parent / "with_sample")
    sample = pl.read_csv(results / "synthetic" / "sample_submission.csv")
    absent = sample.with_columns(pl.col("row_id").str.replace(r"^\d+_", "1234567_")).unique(
        "row_id", maintain_order=True)
    pl.concat([sample, absent]).write_csv(with_sample / "sample_submission.csv")
    graded = pl.from_pandas(model.predict(pd.DataFrame({"data_dir": [str(with_sample)]})))
    assert graded["row_id"].to_list() == pl.concat([sample, absent])["row_id"].to_list()
    prior = priors_for_rows(pl.read_csv(results / "bundle" / "priors.csv"), absent["row_id"].to_list())
    assert_same_grades(graded.filter(pl.col("row_id").str.starts_with("1234567_")), prior, atol=1e-9)
    assert_same_grades(graded.filter(~pl.col("row_id").str.starts_with("1234567_")),
                       pl.read_csv(results / "submission.csv"), atol=1e-5)
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version(record["name"], record["version"])
    cv = json.loads((results / "eval" / "cv.json").read_text())
    assert float(version.tags["cv_score"]) == pytest.approx(cv["cv_score"], abs=1e-6)
    assert float(version.tags["test_score"]) == pytest.approx(cv["test_score"], abs=1e-6)
    # logged to register_model's own run, nested under the seed's train run
    source = client.get_run(version.run_id)
    assert version.run_id == record["run_id"] and source.info.run_name == "register/seed2024"
    assert source.data.tags["snakemake.rule"] == "register_model"
    train_run = json.loads((results / "train" / "parent_run.json").read_text())["run_id"]
    assert source.data.tags["mlflow.parentRunId"] == train_run == record["train_run_id"]
    assert source.data.tags["registered_model_version"] == str(record["version"])
    experiment = client.get_experiment_by_name("spinepipe")
    fold_runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
                 if r.info.run_name.startswith("train/seed2024/") and r.info.run_name.count("/") == 3]
    models = client.search_logged_models([experiment.experiment_id], max_results=1000)
    assert {r.info.run_id for r in fold_runs} <= {m.source_run_id for m in models}


@pytest.mark.slow
def test_html_report(workflow_run):
    workflow_run, _ = workflow_run
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (workflow_run / "report.html").read_text(errors="replace")
    assert "cv.json" in html and "degraded_rows.csv" in html


@pytest.mark.slow
def test_report_shows_the_study_sheets_in_a_real_browser(workflow_run, chromium):
    """results/report.html opened in headless Chromium: QA lists the study sheets (one entry
    per sheet, labelled by study) and the galleries, and a sheet and a gallery render as
    decoded, non-blank images."""
    import browser

    workflow_run, damaged = workflow_run
    report = workflow_run / "results" / "report.html"
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    sheets = sorted(p.stem for p in (workflow_run / "results" / "qa" / "studies").glob("*.png"))
    with browser.headless_chromium() as driver:
        browser.open_report(driver, report)
        assert "QA" in browser.categories(driver)
        assert browser.open_category(driver, "QA") == ["Galleries", "Study sheets"]
        rows = browser.list_results(driver, "QA", "Study sheets")
        assert sorted(r["study"] for r in rows) == sheets, rows
        study = str(damaged["no_axial"])
        assert browser.show_result(driver, study) == "img"
        shown = browser.image_rendered(driver)
        assert shown["decoded"] and shown["non_blank"], shown
        assert f"filename={study}.png" in shown["images"][0]["src"], shown
        assert study in browser.result_info(driver, study)["caption"]
        rows = browser.list_results(driver, "QA", "Galleries")
        assert {r["gallery"] for r in rows} == {"localization_errors", "label_noise",
                                                "confident_wrong", "degraded"}, rows
        assert browser.show_result(driver, "degraded") == "img"
        shown = browser.image_rendered(driver)
        assert shown["decoded"] and shown["non_blank"], shown
        # Evaluation: the scores placed between the prior and the Bayes floor
        browser.open_category(driver, "Evaluation")
        listed = {row.get("File", "") for row in browser.list_results(driver)}
        assert "results/eval/score_placement.png" in listed, listed
        assert browser.show_result(driver, "score_placement.png") == "img"
        shown = browser.image_rendered(driver)
        assert shown["decoded"] and shown["non_blank"], shown
        assert "floor" in browser.result_info(driver, "score_placement.png")["caption"]
        assert browser.console_errors(driver) == []


@pytest.mark.slow
def test_second_run_does_nothing(workflow_run):
    workflow_run, _ = workflow_run
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def planned_wildcards(output: str) -> dict[str, list[str]]:
    """Rule -> the wildcards line of each job a dry run plans."""
    planned: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block.strip())
        if head:
            found = re.search(r"^\s+wildcards: (.+)$", block, re.MULTILINE)
            planned.setdefault(head.group(1), []).append(found.group(1) if found else "")
    return planned


@pytest.mark.slow
@pytest.mark.parametrize("split", ["test", "train"])
def test_adding_a_study_reruns_only_its_shard(workflow_run, split):
    """One more study: every per-study stage (rendering, header parse, localizer stacks and,
    for a test study, localizer inference) reruns for its shard only; a test study leaves
    every trained model (localizers, severity models) and the train crops as they are, and
    reruns the test crops and inference (a train study changes the folds: all retrain)."""
    workflow_run, _ = workflow_run
    config = make_config()
    count, shards = TINY["synthetic"][f"n_{split}"], config["metadata"]["shards"]
    new_study = study_ids(config["seed"], split, count + 1)[-1]
    shard = new_study % shards
    (workflow_run / "grown.yaml").write_text(yaml.safe_dump({"synthetic": {f"n_{split}": count + 1}}))
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "grown.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    planned = planned_wildcards(result.stdout)
    assert planned["synthesize_shard"] == [f"split={split}, shard={shard:04d}"], planned
    for rule in ("instances_shard", "localizer_stacks"):
        assert planned[rule] == [f"split={split}, shard={shard}"], (rule, planned.get(rule))
    if split == "test":
        assert planned["localize"] == [f"split=test, shard={shard}"], planned.get("localize")
        # nothing trained reruns: no localizer, no train crops, no severity model
        trained = {"synthesize_train", "train_localizer", "coordinates", "train_parent_run",
                   "train_model", "predict_oof", "cv_eval"}
        assert not trained & set(planned), sorted(planned)
        assert {w.split(",")[0] for w in planned["crops_shard"]} == {"split=test"}, planned["crops_shard"]
        assert len(planned["predict_test"]) == len(list((workflow_run / "results" / "train" /
                                                         "models").glob("*.pt")))
    else:
        assert len(planned["train_localizer"]) == len(list((workflow_run / "results" / "localize" /
                                                             "models").glob("*.pt")))


@pytest.mark.slow
def test_bad_config_fails_with_a_clear_message(tmp_path):
    result = snakemake(tmp_path, "--config", "synthetic={n_train: -1}", "--dry-run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "n_train" in output and "-1" in output
    result = snakemake(tmp_path, "--config", f"data_dir={tmp_path / 'absent'}", "--dry-run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "absent" in output and "does not exist" in output


@pytest.mark.slow
def test_training_parameter_change_reruns_only_training_and_what_follows(workflow_run):
    workflow_run, _ = workflow_run
    (workflow_run / "lr.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.001}}))
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "lr.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    folds = TINY["folds"]["n"]
    shards = make_config()["qa"]["shards"]
    assert planned_jobs(result.stdout) == {
        "train_parent_run": 1, "train_model": 3 * folds, "predict_oof": 3 * folds, "cv_eval": 1,
        "predict_test": 3 * folds, "submission": 1, "cv_report": 1,
        # the sheets show the probabilities: every sheet shard, galleries and their tracking
        "qa_cases": 1, "qa_sheets": 2 * shards, "qa_studies": 1, "qa_galleries": 1, "qa_mlflow": 1,
        "bundle": 1, "register_model": 1, "all": 1}, result.stdout[-3000:]


@pytest.mark.slow
def test_temperature_scaling_reruns_the_evaluation_not_the_models(workflow_run):
    """Temperatures are fitted by the evaluation on trained models' logits: switching them off
    reruns cv_eval (and the submission after it) and trains nothing."""
    workflow_run, _ = workflow_run
    (workflow_run / "no_temperature.yaml").write_text(
        yaml.safe_dump({"train": {"temperature_scaling": False}}))
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", "no_temperature.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    planned = planned_jobs(result.stdout)
    assert not {"train_model", "train_parent_run", "predict_oof"} & planned.keys(), sorted(planned)
    assert planned["cv_eval"] == 1 and planned["submission"] == 1, planned


@pytest.mark.slow
@pytest.mark.parametrize("overlay", [{"foramen_realign": False}, {"decode": {"radius": 2}}],
                         ids=["foramen_realign", "decode"])
def test_a_localization_reading_setting_reruns_localization_not_the_localizers(workflow_run, overlay):
    """Settings that only say how trained localizers are read (slice choice, decoding) rerun
    the localization of every shard, and leave the localizers' training alone."""
    workflow_run, _ = workflow_run
    name = f"read_{next(iter(overlay))}.yaml"
    (workflow_run / name).write_text(yaml.safe_dump({"localize": overlay}))
    result = snakemake(workflow_run, "--configfile", "tiny.yaml", name, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    planned = planned_jobs(result.stdout)
    assert "train_localizer" not in planned, sorted(planned)
    assert planned["localize"] == 2 * make_config()["metadata"]["shards"], planned
