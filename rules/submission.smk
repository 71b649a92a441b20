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
