# Test inference: every fold model over the test crops, the ensemble, the submission.


rule predict_test:
    input:
        model=severity_model,
        onnx=severity_onnx,
        index="results/crops/test/index.parquet",
        code=script_code("predict_test"),
    output:
        "results/predict/{family}_fold{fold}.parquet",
    log:
        "logs/predict/{family}_fold{fold}.log",
    benchmark:
        "results/benchmarks/predict/{family}_fold{fold}.tsv"
    wildcard_constraints:
        family=MODEL_FAMILY_PATTERN,
        fold=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPU,
    params:
        cfg=SETTINGS["inference"] | {"batch_size": config["inference"]["batch_size"]},
        device=config["train"]["device"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/predict_test.py"


rule submission:
    input:
        predictions=test_predictions(),
        temperatures=TEMPERATURES,
        # training label frequencies: the prediction of a row no view serves
        priors=PRIORS,
        sample=sample_submission(),
        index="results/crops/test/index.parquet",
        unlocalized="results/localize/unlocalized_test.csv",
        series="results/metadata/test/series.parquet",
        code=script_code("submission"),
    output:
        submission="results/submission.csv",
        degraded=report(
            "results/eval/degraded_rows.csv",
            caption="../report/degraded.rst",
            category="Submission",
        ),
    log:
        "logs/submission.log",
    benchmark:
        "results/benchmarks/submission.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        cfg=SETTINGS["inference"],
    script:
        "../workflow_scripts/submission.py"


rule cv_report:
    input:
        oof="results/eval/cv_oof.json",
        submission="results/submission.csv",
        labels=dataset_file("train.csv"),
        test_labels=[str(SYNTHETIC_DIR / "test_labels.csv")] if SYNTHETIC else [],
        truth=[str(SYNTHETIC_DIR / "grade_probabilities.csv")] if SYNTHETIC else [],
        parent="results/train/parent_run.json",
        datasets="results/tracking/datasets_test.json",
        code=script_code("cv_report"),
    output:
        cv=report("results/eval/cv.json", caption="../report/cv.rst", category="Evaluation"),
        placement=report(
            "results/eval/score_placement.png",
            caption="../report/score_placement.rst",
            category="Evaluation",
        ),
    log:
        "logs/eval/cv_report.log",
    benchmark:
        "results/benchmarks/eval/cv_report.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tracking=config["mlflow"],
    script:
        "../workflow_scripts/cv_report.py"


# Further training seeds (train.seeds): test predictions, submission and cv.json of each seed's
# models under results/seeds/{seed}/ (see train.smk), then their spread over the seeds.
use rule predict_test as predict_test_seed with:
    input:
        **inherited_input(
            rules.predict_test, model=seed_path("results/train/models/{family}_fold{fold}.pt")
        ),
    output:
        seed_path("results/predict/{family}_fold{fold}.parquet"),
    log:
        seed_path("logs/predict/{family}_fold{fold}.log"),
    benchmark:
        seed_path("results/benchmarks/predict/{family}_fold{fold}.tsv")


use rule submission as submission_seed with:
    input:
        **inherited_input(
            rules.submission,
            predictions=[seed_path(p) for p in test_predictions()],
            temperatures=seed_path("results/train/temperatures.json"),
        ),
    output:
        submission=seed_path("results/submission.csv"),
        degraded=seed_path("results/eval/degraded_rows.csv"),
    log:
        seed_path("logs/submission.log"),
    benchmark:
        seed_path("results/benchmarks/submission.tsv")


use rule cv_report as cv_report_seed with:
    input:
        **inherited_input(
            rules.cv_report,
            oof=seed_path("results/eval/cv_oof.json"),
            submission=seed_path("results/submission.csv"),
            parent=seed_path("results/train/parent_run.json"),
        ),
    output:
        cv=seed_path("results/eval/cv.json"),
        placement=seed_path("results/eval/score_placement.png"),
    log:
        seed_path("logs/eval/cv_report.log"),
    benchmark:
        seed_path("results/benchmarks/eval/cv_report.tsv")


rule seeds_summary:
    input:
        main="results/eval/cv.json",
        seeds=expand("results/seeds/{seed}/eval/cv.json", seed=SEEDS),
        code=script_code("seeds_summary"),
    output:
        "results/eval/seeds.json",
    log:
        "logs/eval/seeds_summary.log",
    benchmark:
        "results/benchmarks/eval/seeds_summary.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        master_seed=config["seed"],
        seeds=SEEDS,
    script:
        "../workflow_scripts/seeds_summary.py"
