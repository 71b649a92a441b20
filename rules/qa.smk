# Visual QA: one sheet per study (test studies always, a seeded sample of train studies and
# every train study a gallery shows), galleries of what needs a look, all in the report and
# as artifacts of the MLflow run `qa`.

# What each split's sheets read: train studies as the end-to-end CV sees them (out-of-fold
# points, crops and probabilities), test studies as the submission used them.
QA_SOURCES = {
    "train": {
        "crops": "results/crops/train_predicted/index.parquet",
        "probabilities": "results/eval/oof_end_to_end.csv",
        "labels": [dataset_file("train.csv")],
    },
    "test": {
        "crops": "results/crops/test/index.parquet",
        "probabilities": "results/submission.csv",
        "labels": [str(SYNTHETIC_DIR / "test_labels.csv")] if SYNTHETIC else [],
    },
}


rule qa_cases:
    input:
        label_noise="results/localize/label_noise.csv",
        oof="results/eval/oof_end_to_end.csv",
        labels=dataset_file("train.csv"),
        degraded="results/eval/degraded_rows.csv",
        series="results/metadata/series.parquet",
        code=script_code("qa_cases"),
    output:
        cases="results/qa/cases.csv",
        train_studies="results/qa/train_studies.txt",
    log:
        "logs/qa/cases.log",
    benchmark:
        "results/benchmarks/qa/cases.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=config["qa"],
        seed=config["seed"],
    script:
        "../workflow_scripts/qa_cases.py"


rule qa_sheets:
    input:
        series=f"{GRADED_METADATA}/series.parquet",
        instances=f"{GRADED_METADATA}/instances.parquet",
        stacks="results/localize/stacks/{split}/index.parquet",
        predictions="results/localize/predictions_{split}.parquet",
        # (a bundle grades studies without annotations: their predicted points alone)
        coordinates=(
            "results/localize/coordinates_test.parquet"
            if PREDICT
            else "results/localize/coordinates.parquet"
        ),
        reasons="results/localize/unlocalized_{split}.csv",
        crops=lambda wc: QA_SOURCES[wc.split]["crops"],
        probabilities=lambda wc: QA_SOURCES[wc.split]["probabilities"],
        labels=lambda wc: QA_SOURCES[wc.split]["labels"],
        only=lambda wc: ["results/qa/train_studies.txt"] if wc.split == "train" else [],
        code=script_code("qa_sheets"),
    output:
        directory("results/qa/sheets/{split}/shard{shard}"),
    log:
        "logs/qa/sheets_{split}_shard{shard}.log",
    benchmark:
        "results/benchmarks/qa/sheets_{split}_shard{shard}.tsv"
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        crops=SETTINGS["crops"],
        shards=config["qa"]["shards"],
        dpi=config["qa"]["dpi"],
        foramen_offset_mm=SETTINGS["foramen_offset_mm"],
    script:
        "../workflow_scripts/qa_sheets.py"


rule qa_studies:
    input:
        code=script_code("qa_studies"),
        shards=qa_sheet_shards(),
    output:
        report(
            directory("results/qa/studies"),
            patterns=["{study_id}.png"],
            caption="../report/qa_study.rst",
            category="QA",
            subcategory="Study sheets",
            labels={"study": "{study_id}"},
        ),
    log:
        "logs/qa/studies.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../workflow_scripts/qa_studies.py"


rule qa_galleries:
    input:
        cases="results/qa/cases.csv",
        series="results/metadata/series.parquet",
        instances="results/metadata/instances.parquet",
        coordinates="results/localize/coordinates.parquet",
        train_stacks="results/localize/stacks/train/index.parquet",
        test_stacks="results/localize/stacks/test/index.parquet",
        train_predictions="results/localize/predictions_train.parquet",
        test_predictions="results/localize/predictions_test.parquet",
        train_reasons="results/localize/unlocalized_train.csv",
        test_reasons="results/localize/unlocalized_test.csv",
        train_crops=QA_SOURCES["train"]["crops"],
        test_crops=QA_SOURCES["test"]["crops"],
        train_probabilities=QA_SOURCES["train"]["probabilities"],
        test_probabilities=QA_SOURCES["test"]["probabilities"],
        train_labels=QA_SOURCES["train"]["labels"],
        test_labels=QA_SOURCES["test"]["labels"],
        code=script_code("qa_galleries"),
    output:
        report(
            directory("results/qa/galleries"),
            patterns=["{gallery}.png"],
            caption="../report/qa_gallery.rst",
            category="QA",
            subcategory="Galleries",
            labels={"gallery": "{gallery}"},
        ),
    log:
        "logs/qa/galleries.log",
    benchmark:
        "results/benchmarks/qa/galleries.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        crops=config["crops"],
        dpi=config["qa"]["dpi"],
        foramen_offset_mm=config["geometry"]["foramen_offset_mm"],
    script:
        "../workflow_scripts/qa_galleries.py"


rule qa_mlflow:
    input:
        studies="results/qa/studies",
        galleries="results/qa/galleries",
        code=script_code("qa_mlflow"),
    output:
        "results/qa/mlflow.json",
    log:
        "logs/qa/mlflow.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        tracking=config["mlflow"],
    script:
        "../workflow_scripts/qa_mlflow.py"
