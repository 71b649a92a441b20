# Level localization: slice and point models per series type and fold, their out-of-fold and
# test predictions, the coordinates the crops are cut at, and their evaluation.


rule localizer_stacks:
    input:
        # this shard's own header rows: a study elsewhere never reruns it
        instances="results/metadata/{split}/instances_{shard}.parquet",
        series="results/metadata/{split}/series_{shard}.parquet",
        code=script_code("localizer_stacks"),
    output:
        index="results/localize/stacks/{split}/shard{shard}/index.parquet",
        # every slice of the shard's series, (n, size, size) float16; the index locates them
        stacks="results/localize/stacks/{split}/shard{shard}/stacks.npy",
    log:
        "logs/localize/stacks_{split}_{shard}.log",
    benchmark:
        "results/benchmarks/localize/stacks_{split}_{shard}.tsv"
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        size=SETTINGS["localize"]["image_size"],
    script:
        "../workflow_scripts/localizer_stacks.py"


rule stacks_index:
    input:
        indexes=expand(
            "results/localize/stacks/{{split}}/shard{shard}/index.parquet", shard=range(SHARDS)
        ),
        # the files its rows point into: a missing one rebuilds its shard
        arrays=expand(
            "results/localize/stacks/{{split}}/shard{shard}/stacks.npy", shard=range(SHARDS)
        ),
        code=script_code("stacks_index"),
    output:
        "results/localize/stacks/{split}/index.parquet",
    log:
        "logs/localize/stacks_index_{split}.log",
    benchmark:
        "results/benchmarks/localize/stacks_index_{split}.tsv"
    wildcard_constraints:
        split="train|test",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/stacks_index.py"


rule train_localizer:
    input:
        stacks="results/localize/stacks/train/index.parquet",
        # train studies only: a new test study never retrains the localizers
        instances="results/metadata/train/instances.parquet",
        series="results/metadata/train/series.parquet",
        xref="results/metadata/axial_xref.parquet",
        folds="results/folds.parquet",
        coordinates=dataset_file("train_label_coordinates.csv"),
        tracking="results/tracking/experiment.txt",
        datasets="results/tracking/datasets_train.json",
        code=script_code("train_localizer"),
    output:
        model="results/localize/models/{kind}_{task}_fold{fold}.pt",
    log:
        "logs/localize/train_{kind}_{task}_fold{fold}.log",
    benchmark:
        "results/benchmarks/localize/train_{kind}_{task}_fold{fold}.tsv"
    wildcard_constraints:
        kind="point|slice",
        task="|".join(LOCALIZE_TASKS),
        fold=r"\d+",
    priority: localizer_priority
    conda:
        "../envs/pipeline.yaml"
    threads: config["localize"]["threads"]
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=1 if config["localize"]["device"] == "cuda" else 0,
    params:
        cfg=lambda w: localize_settings.training_settings(config["localize"])
        | {"seed": config["seed"]},
        tracking=config["mlflow"],
    script:
        "../workflow_scripts/train_localizer.py"


rule localize:
    input:
        unpack(localize_shard_inputs),
        models=localizer_models(),
        onnx=localizer_onnx(),
        code=script_code("localize"),
    output:
        predictions="results/localize/{split}/shard{shard}/predictions.parquet",
        reasons="results/localize/{split}/shard{shard}/unlocalized.csv",
    log:
        "logs/localize/localize_{split}_{shard}.log",
    benchmark:
        "results/benchmarks/localize/localize_{split}_{shard}.tsv"
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: config["localize"]["threads"]
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        # the slice models' choice where the slice method does not use it: reported by a
        # training run that compares the methods, skipped by a bundle grading new studies
        cfg=localization_settings(
            SETTINGS,
            report_learned_slices=not PREDICT and config["localize"]["compare_slice_methods"],
        ),
        runtime=RUNTIME,
    script:
        "../workflow_scripts/localize.py"


rule localize_merge:
    input:
        predictions=expand(
            "results/localize/{{split}}/shard{shard}/predictions.parquet", shard=range(SHARDS)
        ),
        reasons=expand(
            "results/localize/{{split}}/shard{shard}/unlocalized.csv", shard=range(SHARDS)
        ),
        code=script_code("localize_merge"),
    output:
        predictions="results/localize/predictions_{split}.parquet",
        reasons="results/localize/unlocalized_{split}.csv",
    log:
        "logs/localize/localize_merge_{split}.log",
    benchmark:
        "results/benchmarks/localize/localize_merge_{split}.tsv"
    wildcard_constraints:
        split="train|test",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/localize_merge.py"


# The train and test studies' coordinates are separate files: a new test study reruns the
# test crops and inference, never the train crops or the severity models.
rule coordinates:
    input:
        annotated=dataset_file("train_label_coordinates.csv"),
        train="results/localize/predictions_train.parquet",
        instances="results/metadata/train/instances.parquet",
        series="results/metadata/train/series.parquet",
        code=script_code("coordinates"),
    output:
        # annotated points, out-of-fold predictions where none (the severity models' crops)
        coordinates="results/localize/coordinates_train.parquet",
        # the train studies at their out-of-fold predicted points only (crops split
        # train_predicted: the end-to-end CV)
        train_predicted="results/localize/coordinates_train_predicted.parquet",
        # quantiles of the out-of-fold localization error per family (the training jitter)
        oof_error="results/localize/oof_error.json",
        noise=report(
            "results/localize/label_noise.csv",
            caption="../report/label_noise.rst",
            category="Localization",
        ),
        plot=report(
            "results/localize/label_noise.png",
            caption="../report/label_noise.rst",
            category="Localization",
        ),
    log:
        "logs/localize/coordinates.log",
    benchmark:
        "results/benchmarks/localize/coordinates.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        noise=config["localize"]["label_noise"],
    script:
        "../workflow_scripts/coordinates.py"


rule coordinates_test:
    input:
        "results/localize/predictions_test.parquet",
        code=script_code("coordinates_test"),
    output:
        "results/localize/coordinates_test.parquet",
    log:
        "logs/localize/coordinates_test.log",
    benchmark:
        "results/benchmarks/localize/coordinates_test.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/coordinates_test.py"


rule coordinates_merge:
    input:
        splits=[f"results/localize/coordinates_{split}.parquet" for split in SPLITS],
        code=script_code("coordinates_merge"),
    output:
        "results/localize/coordinates.parquet",
    log:
        "logs/localize/coordinates_merge.log",
    benchmark:
        "results/benchmarks/localize/coordinates_merge.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/coordinates_merge.py"


rule localize_eval:
    input:
        train="results/localize/predictions_train.parquet",
        test="results/localize/predictions_test.parquet",
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        centers=str(SYNTHETIC_DIR / "level_centers.csv"),
        tracking="results/tracking/experiment.txt",
        datasets=DATASET_RECORDS,
        code=script_code("localize_eval"),
    output:
        report(
            "results/eval/localization.json",
            caption="../report/localization.rst",
            category="Evaluation",
        ),
    log:
        "logs/eval/localization.log",
    benchmark:
        "results/benchmarks/eval/localization.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        tracking=config["mlflow"],
    script:
        "../workflow_scripts/localize_eval.py"
