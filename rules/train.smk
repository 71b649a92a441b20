# Severity classifiers: one job per condition family and fold, out-of-fold evaluation (on the
# annotated points, and end to end: each fold's models over the train studies it held out, at
# their out-of-fold predicted points).

TRAIN_GPU = 1 if config["train"]["device"] == "cuda" else 0
# config["train"] without `seeds`: which further seeds run (results/seeds/) never changes the
# master seed's models or evaluation, so adding one reruns none of them (params are a rerun trigger).
TRAIN_CONFIG = {k: v for k, v in config["train"].items() if k != "seeds"}
# What a model's training depends on: which families exist (families, all_series_model)
# decides which jobs run, not how any one of them trains, and temperature scaling is fitted by
# the evaluation (cv_eval) on trained models' logits, so these stay out of the params.
TRAIN_PARAMS = {
    k: v
    for k, v in TRAIN_CONFIG.items()
    if k not in ("families", "all_series_model", "temperature_scaling")
}


rule train_parent_run:
    input:
        code=script_code("train_parent_run"),
        tracking="results/tracking/experiment.txt",
        # the train split only: a new test study reruns no training
        datasets="results/tracking/datasets_train.json",
    output:
        "results/train/parent_run.json",
    log:
        "logs/train/parent_run.log",
    benchmark:
        "results/benchmarks/train/parent_run.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tracking=config["mlflow"],
        train=TRAIN_PARAMS,
        crops=config["crops"],
        folds=config["folds"],
        seed=config["seed"],
    script:
        "../workflow_scripts/train_parent_run.py"


rule train_model:
    input:
        index="results/crops/train/index.parquet",
        # the same samples cut at their out-of-fold predicted points: a share of the
        # training draws (train.predicted_point_share) sees what test time will show
        predicted_index="results/crops/train_predicted/index.parquet",
        # measured out-of-fold localization error: sets the jitter when it is 'auto'
        localization_error="results/localize/oof_error.json",
        labels=dataset_file("train.csv"),
        folds="results/folds.parquet",
        parent="results/train/parent_run.json",
        datasets="results/tracking/datasets_train.json",
        code=script_code("train_model"),
    output:
        model="results/train/models/{family}_fold{fold}.pt",
        predictions="results/train/oof/{family}_fold{fold}.parquet",
    log:
        "logs/train/{family}_fold{fold}.log",
    benchmark:
        "results/benchmarks/train/{family}_fold{fold}.tsv"
    wildcard_constraints:
        family=MODEL_FAMILY_PATTERN,
        fold=r"\d+",
    priority: severity_priority
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=TRAIN_GPU,
    params:
        cfg=TRAIN_PARAMS,
        crops=config["crops"],
        seed=config["seed"],
        tracking=config["mlflow"],
        # survives a killed job (not an output): --rerun-incomplete resumes from it
        checkpoint=lambda wc: f"results/train/checkpoints/{wc.family}_fold{wc.fold}.last.pt",
    script:
        "../workflow_scripts/train_model.py"


rule predict_oof:
    input:
        model="results/train/models/{family}_fold{fold}.pt",
        index="results/crops/train_predicted/index.parquet",
        folds="results/folds.parquet",
        code=script_code("predict_oof"),
    output:
        "results/predict_oof/{family}_fold{fold}.parquet",
    log:
        "logs/predict_oof/{family}_fold{fold}.log",
    benchmark:
        "results/benchmarks/predict_oof/{family}_fold{fold}.tsv"
    wildcard_constraints:
        family=FAMILY_PATTERN,
        fold=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPU,
    params:
        cfg={k: config["inference"][k] for k in ("tta", "batch_size")},
        device=config["train"]["device"],
    script:
        "../workflow_scripts/predict_oof.py"


rule cv_eval:
    input:
        annotated=oof_predictions(),
        end_to_end=end_to_end_oof_predictions(),
        labels=dataset_file("train.csv"),
        folds="results/folds.parquet",
        index="results/crops/train_predicted/index.parquet",
        unlocalized="results/localize/unlocalized_train.csv",
        series="results/metadata/train/series.parquet",
        parent="results/train/parent_run.json",
        datasets="results/tracking/datasets_train.json",
        code=script_code("cv_eval"),
    output:
        cv="results/eval/cv_oof.json",
        temperatures="results/train/temperatures.json",
        predictions="results/eval/oof_end_to_end.csv",
        degraded=report(
            "results/eval/degraded_rows_oof.csv",
            caption="../report/degraded_oof.rst",
            category="Evaluation",
        ),
        confusion=report(
            "results/eval/confusion_matrices.png",
            caption="../report/cv.rst",
            category="Evaluation",
        ),
        calibration=report(
            "results/eval/calibration.png", caption="../report/cv.rst", category="Evaluation"
        ),
    log:
        "logs/eval/cv.log",
    benchmark:
        "results/benchmarks/eval/cv.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        cfg=TRAIN_CONFIG,
        tracking=config["mlflow"],
    script:
        "../workflow_scripts/cv_eval.py"


# Further training seeds (train.seeds; SEEDS in common.smk): the rules above again, one job
# per seed, under results/seeds/{seed}/. Data, folds, localization and crops stay shared; the
# seed changes the classifiers' initial weights, sample order, augmentation, jitter draws and
# which draws read the predicted-point crop.
# Each seed has its own MLflow run train/seed{S}; its evaluation runs nest under it, never
# under the master seed's.
use rule train_parent_run as train_parent_run_seed with:
    output:
        seed_path("results/train/parent_run.json"),
    log:
        seed_path("logs/train/parent_run.log"),
    benchmark:
        seed_path("results/benchmarks/train/parent_run.tsv")
    params:
        seed=lambda wildcards: int(wildcards.seed),


use rule train_model as train_model_seed with:
    input:
        **inherited_input(rules.train_model, parent=seed_path("results/train/parent_run.json")),
    output:
        model=seed_path("results/train/models/{family}_fold{fold}.pt"),
        predictions=seed_path("results/train/oof/{family}_fold{fold}.parquet"),
    log:
        seed_path("logs/train/{family}_fold{fold}.log"),
    benchmark:
        seed_path("results/benchmarks/train/{family}_fold{fold}.tsv")
    params:
        seed=lambda wildcards: int(wildcards.seed),
        checkpoint=lambda wc: f"results/seeds/{wc.seed}/train/checkpoints/{wc.family}_fold{wc.fold}.last.pt",


use rule predict_oof as predict_oof_seed with:
    input:
        **inherited_input(
            rules.predict_oof, model=seed_path("results/train/models/{family}_fold{fold}.pt")
        ),
    output:
        seed_path("results/predict_oof/{family}_fold{fold}.parquet"),
    log:
        seed_path("logs/predict_oof/{family}_fold{fold}.log"),
    benchmark:
        seed_path("results/benchmarks/predict_oof/{family}_fold{fold}.tsv")


use rule cv_eval as cv_eval_seed with:
    input:
        **inherited_input(
            rules.cv_eval,
            annotated=[seed_path(p) for p in oof_predictions()],
            end_to_end=[seed_path(p) for p in end_to_end_oof_predictions()],
            parent=seed_path("results/train/parent_run.json"),
        ),
    output:
        cv=seed_path("results/eval/cv_oof.json"),
        temperatures=seed_path("results/train/temperatures.json"),
        predictions=seed_path("results/eval/oof_end_to_end.csv"),
        degraded=seed_path("results/eval/degraded_rows_oof.csv"),
        confusion=seed_path("results/eval/confusion_matrices.png"),
        calibration=seed_path("results/eval/calibration.png"),
    log:
        seed_path("logs/eval/cv.log"),
    benchmark:
        seed_path("results/benchmarks/eval/cv.tsv")
