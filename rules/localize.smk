# Folds and level localization (slice and point models per fold, OOF and test predictions).

LOCALIZE_TASKS = ["sagittal_t2", "sagittal_t1", "axial_t2"]
LOCALIZE_KINDS = ["point", "slice"]


def localizer_checkpoints():
    return expand(
        "results/localize/models/{kind}_{task}_fold{fold}.pt",
        kind=LOCALIZE_KINDS,
        task=LOCALIZE_TASKS,
        fold=range(config["folds"]["n"]),
    )


rule tracking_init:
    output:
        "results/tracking/experiment.txt",
    params:
        tracking=config["mlflow"],
    log:
        "logs/tracking_init.log",
    benchmark:
        "results/benchmarks/tracking_init.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/tracking_init.py"


rule folds:
    input:
        labels=dataset_file("train.csv"),
        code=code("folds"),
    output:
        "results/folds.parquet",
    params:
        n=config["folds"]["n"],
        seed=config["seed"],
    log:
        "logs/folds.log",
    benchmark:
        "results/benchmarks/folds.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/folds.py"


rule localizer_stacks:
    input:
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        code=code("localize/stacks", "pixels"),
    output:
        index="results/localize/stacks/{split}/index.parquet",
    params:
        size=config["localize"]["image_size"],
        out_dir=lambda w: f"results/localize/stacks/{w.split}",
    wildcard_constraints:
        split="train|test",
    log:
        "logs/localize/stacks_{split}.log",
    benchmark:
        "results/benchmarks/localize/stacks_{split}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/localizer_stacks.py"


rule train_localizer:
    input:
        stacks="results/localize/stacks/train/index.parquet",
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        xref="results/metadata/axial_xref.parquet",
        folds="results/folds.parquet",
        coordinates=dataset_file("train_label_coordinates.csv"),
        tracking="results/tracking/experiment.txt",
        datasets="results/tracking/datasets.json",
        code=code("localize/models", "localize/samples", "localize/training", "localize/pipeline",
                  "checkpoints", "geometry", "xref"),
    output:
        model="results/localize/models/{kind}_{task}_fold{fold}.pt",
    params:
        cfg=lambda w: config["localize"] | {"seed": config["seed"]},
        tracking=config["mlflow"],
    wildcard_constraints:
        kind="point|slice",
        task="|".join(LOCALIZE_TASKS),
        fold=r"\d+",
    log:
        "logs/localize/train_{kind}_{task}_fold{fold}.log",
    benchmark:
        "results/benchmarks/localize/train_{kind}_{task}_fold{fold}.tsv"
    threads: config["localize"]["threads"]
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=1 if config["localize"]["device"] == "cuda" else 0,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/train_localizer.py"


rule localize:
    input:
        models=localizer_checkpoints(),
        stacks="results/localize/stacks/{split}/index.parquet",
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        folds="results/folds.parquet",
        code=code("localize/inference", "localize/decode", "localize/models", "localize/pipeline", "xref",
                  "checkpoints", "pixels"),
    output:
        predictions="results/localize/predictions_{split}.parquet",
        reasons="results/localize/unlocalized_{split}.csv",
    params:
        cfg=config["localize"] | {"foramen_offset_mm": config["geometry"]["foramen_offset_mm"]},
    wildcard_constraints:
        split="train|test",
    log:
        "logs/localize/localize_{split}.log",
    benchmark:
        "results/benchmarks/localize/localize_{split}.tsv"
    threads: config["localize"]["threads"]
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/localize.py"


rule coordinates:
    input:
        annotated=dataset_file("train_label_coordinates.csv"),
        train="results/localize/predictions_train.parquet",
        test="results/localize/predictions_test.parquet",
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        code=code("localize/coordinates", "xref"),
    output:
        coordinates="results/localize/coordinates.parquet",
        # the train studies at their out-of-fold predicted points only (crops split
        # train_predicted: the end-to-end CV)
        train_predicted="results/localize/coordinates_train_predicted.parquet",
        # quantiles of the out-of-fold localization error per family (the training jitter)
        oof_error="results/localize/oof_error.json",
        noise=report("results/localize/label_noise.csv", caption="../report/label_noise.rst",
                     category="Localization"),
        plot=report("results/localize/label_noise.png", caption="../report/label_noise.rst",
                    category="Localization"),
    params:
        noise=config["localize"]["label_noise"],
    log:
        "logs/localize/coordinates.log",
    benchmark:
        "results/benchmarks/localize/coordinates.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/coordinates.py"


rule localize_eval:
    input:
        train="results/localize/predictions_train.parquet",
        test="results/localize/predictions_test.parquet",
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        centers=str(SYNTHETIC_DIR / "level_centers.csv"),
        tracking="results/tracking/experiment.txt",
        datasets="results/tracking/datasets.json",
        code=code("localize/evaluate", "localize/samples"),
    output:
        report("results/eval/localization.json", caption="../report/localization.rst",
               category="Evaluation"),
    params:
        tracking=config["mlflow"],
    log:
        "logs/eval/localization.log",
    benchmark:
        "results/benchmarks/eval/localization.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/localize_eval.py"
