# Cropped 2.5D views around the localized points, cached as memory-mappable arrays.

# Crop splits: the points each is cut at, and the studies (metadata split) it covers; each
# reads its own split's files only, so a new test study leaves the train crops alone.
# train: annotated points (predicted where none), what the severity models train on;
# test: predicted points; train_predicted: the train studies at their out-of-fold predicted
# points only, as a test study is cut (the end-to-end CV grades them).
CROP_SPLITS = {
    "train": {"coordinates": "results/localize/coordinates_train.parquet", "studies": "train"},
    "test": {"coordinates": "results/localize/coordinates_test.parquet", "studies": "test"},
    "train_predicted": {
        "coordinates": "results/localize/coordinates_train_predicted.parquet",
        "studies": "train",
    },
}
CROP_SPLIT_PATTERN = "|".join(sorted(CROP_SPLITS, key=len, reverse=True))


rule crops_shard:
    input:
        coordinates=lambda wc: CROP_SPLITS[wc.split]["coordinates"],
        instances=lambda wc: f"results/metadata/{CROP_SPLITS[wc.split]['studies']}/instances.parquet",
        series=lambda wc: f"results/metadata/{CROP_SPLITS[wc.split]['studies']}/series.parquet",
        code=script_code("crops_shard"),
    output:
        array="results/crops/{split}/shard{shard}.npy",
        index="results/crops/{split}/shard{shard}.parquet",
    log:
        "logs/crops/{split}_shard{shard}.log",
    benchmark:
        "results/benchmarks/crops/{split}_shard{shard}.tsv"
    wildcard_constraints:
        split=CROP_SPLIT_PATTERN,
        shard=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=SETTINGS["crops"] | {"shards": config["crops"]["shards"]},
        studies=lambda wc: CROP_SPLITS[wc.split]["studies"],
    script:
        "../workflow_scripts/crops_shard.py"


rule crops_index:
    input:
        shards=lambda wc: crop_shards(wc.split),
        code=script_code("crops_index"),
    output:
        index="results/crops/{split}/index.parquet",
        summary="results/crops/{split}/summary.json",
    log:
        "logs/crops/{split}_index.log",
    benchmark:
        "results/benchmarks/crops/{split}_index.tsv"
    wildcard_constraints:
        split=CROP_SPLIT_PATTERN,
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/crops_index.py"
