# Cropped 2.5D views around the localized points, cached as memory-mappable arrays.


def crop_shards(split):
    return expand("results/crops/{split}/shard{shard}.parquet", split=split,
                  shard=range(config["crops"]["shards"]))


rule crops_shard:
    input:
        coordinates="results/localize/coordinates.parquet",
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        code=code("crops/views", "crops/extract", "crops/build", "geometry", "pixels"),
    output:
        array="results/crops/{split}/shard{shard}.npy",
        index="results/crops/{split}/shard{shard}.parquet",
    params:
        cfg=config["crops"],
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    log:
        "logs/crops/{split}_shard{shard}.log",
    benchmark:
        "results/benchmarks/crops/{split}_shard{shard}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/crops_shard.py"


rule crops_index:
    input:
        shards=lambda wc: crop_shards(wc.split),
        code=code("crops/build"),
    output:
        index="results/crops/{split}/index.parquet",
        summary="results/crops/{split}/summary.json",
    wildcard_constraints:
        split="train|test",
    log:
        "logs/crops/{split}_index.log",
    benchmark:
        "results/benchmarks/crops/{split}_index.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/crops_index.py"
