# Test inference: every fold model over the test crops, the ensemble, the submission.


def test_predictions():
    return expand("results/predict/{family}_fold{fold}.parquet", family=config["train"]["families"],
                  fold=range(config["folds"]["n"]))


rule predict_test:
    input:
        model="results/train/models/{family}_fold{fold}.pt",
        index="results/crops/test/index.parquet",
        code=code("classify/inference", "classify/data", "classify/models", "classify/pipeline",
                  "checkpoints"),
    output:
        "results/predict/{family}_fold{fold}.parquet",
    params:
        cfg=config["inference"],
        device=config["train"]["device"],
    wildcard_constraints:
        family="spinal|foraminal|subarticular|all",
        fold=r"\d+",
    log:
        "logs/predict/{family}_fold{fold}.log",
    benchmark:
        "results/benchmarks/predict/{family}_fold{fold}.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPU,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/predict_test.py"


rule submission:
    input:
        predictions=test_predictions(),
        temperatures="results/train/temperatures.json",
        sample=dataset_file("sample_submission.csv"),
        labels=dataset_file("train.csv"),
        index="results/crops/test/index.parquet",
        unlocalized="results/localize/unlocalized_test.csv",
        series="results/metadata/series.parquet",
        code=code("classify/inference", "metric"),
    output:
        submission="results/submission.csv",
        degraded=report("results/eval/degraded_rows.csv", caption="../report/degraded.rst",
                        category="Submission"),
    params:
        cfg=config["inference"],
    log:
        "logs/submission.log",
    benchmark:
        "results/benchmarks/submission.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/submission.py"


rule cv_report:
    input:
        oof="results/eval/cv_oof.json",
        submission="results/submission.csv",
        labels=dataset_file("train.csv"),
        test_labels=[str(SYNTHETIC_DIR / "test_labels.csv")] if SYNTHETIC else [],
        parent="results/train/parent_run.json",
        code=code("metric"),
    output:
        report("results/eval/cv.json", caption="../report/cv.rst", category="Evaluation"),
    params:
        tracking=config["mlflow"],
    log:
        "logs/eval/cv_report.log",
    benchmark:
        "results/benchmarks/eval/cv_report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/cv_report.py"


rule register_model:
    input:
        models=family_models(),
        temperatures="results/train/temperatures.json",
        labels=dataset_file("train.csv"),
        index="results/crops/test/index.parquet",
        cv="results/eval/cv.json",
        parent="results/train/parent_run.json",
        code=code("classify/mlflow_model", "classify/inference", "classify/data", "classify/models",
                  "classify/pipeline", "checkpoints", "tracking"),
    output:
        "results/tracking/registered_model.json",
    params:
        tracking=config["mlflow"],
        inference=config["inference"],
        name=config["registry"]["name"],
    log:
        "logs/register_model.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/register_model.py"


# Further training seeds (train.seeds): test predictions, submission and cv.json of each seed's
# models under results/seeds/{seed}/ (see train.smk), then their spread over the seeds.
use rule predict_test as predict_test_seed with:
    input:
        **inherited_input(rules.predict_test, model=seed_path("results/train/models/{family}_fold{fold}.pt")),
    output:
        seed_path("results/predict/{family}_fold{fold}.parquet"),
    log:
        seed_path("logs/predict/{family}_fold{fold}.log"),
    benchmark:
        seed_path("results/benchmarks/predict/{family}_fold{fold}.tsv")


use rule submission as submission_seed with:
    input:
        **inherited_input(rules.submission,
                          predictions=[seed_path(p) for p in test_predictions()],
                          temperatures=seed_path("results/train/temperatures.json")),
    output:
        submission=seed_path("results/submission.csv"),
        degraded=seed_path("results/eval/degraded_rows.csv"),
    log:
        seed_path("logs/submission.log"),
    benchmark:
        seed_path("results/benchmarks/submission.tsv")


use rule cv_report as cv_report_seed with:
    input:
        **inherited_input(rules.cv_report, oof=seed_path("results/eval/cv_oof.json"),
                          submission=seed_path("results/submission.csv"),
                          parent=seed_path("results/train/parent_run.json")),
    output:
        seed_path("results/eval/cv.json"),
    log:
        seed_path("logs/eval/cv_report.log"),
    benchmark:
        seed_path("results/benchmarks/eval/cv_report.tsv")


rule seeds_summary:
    input:
        main="results/eval/cv.json",
        seeds=expand("results/seeds/{seed}/eval/cv.json", seed=SEEDS),
        code=code("classify/seeds"),
    output:
        "results/eval/seeds.json",
    params:
        master_seed=config["seed"],
        seeds=SEEDS,
    log:
        "logs/eval/seeds_summary.log",
    benchmark:
        "results/benchmarks/eval/seeds_summary.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/seeds_summary.py"
