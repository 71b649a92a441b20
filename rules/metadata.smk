# Series metadata (header-only parse, sharded by study) and 3D geometry.


rule instances_shard:
    input:
        unpack(instances_shard_source),
        code=script_code("instances_shard"),
    output:
        instances="results/metadata/{split}/instances_{shard}.parquet",
        # its series summarized (geometry, order by position), as metadata.parquet's rows
        series="results/metadata/{split}/series_{shard}.parquet",
    log:
        "logs/metadata/instances_{split}_{shard}.log",
    benchmark:
        "results/benchmarks/metadata/instances_{split}_{shard}.tsv"
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        # a real dataset's rows of this shard (CSV text); empty for a synthesis shard
        rows=instances_shard_rows,
        data_dir=str(DATA_DIR),
        synthetic=SYNTHETIC,
        cache_dir=lambda w: f"results/metadata/cache/{w.split}",
    script:
        "../workflow_scripts/instances_shard.py"


rule metadata_split:
    input:
        instances=expand(
            "results/metadata/{{split}}/instances_{shard}.parquet", shard=range(SHARDS)
        ),
        series=expand("results/metadata/{{split}}/series_{shard}.parquet", shard=range(SHARDS)),
        code=script_code("metadata"),
    output:
        instances="results/metadata/{split}/instances.parquet",
        series="results/metadata/{split}/series.parquet",
    log:
        "logs/metadata/metadata_{split}.log",
    benchmark:
        "results/benchmarks/metadata/metadata_{split}.tsv"
    wildcard_constraints:
        split="train|test",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow_scripts/metadata.py"


use rule metadata_split as metadata with:
    input:
        instances=expand("results/metadata/{split}/instances.parquet", split=SPLITS),
        series=expand("results/metadata/{split}/series.parquet", split=SPLITS),
        code=script_code("metadata"),
    output:
        instances="results/metadata/instances.parquet",
        series=report(
            "results/metadata/series.parquet",
            caption="../report/series.rst",
            category="Metadata",
        ),
    log:
        "logs/metadata/metadata.log",
    benchmark:
        "results/benchmarks/metadata/metadata.tsv"


rule axial_xref:
    input:
        # the annotated (train) studies only: a new test study never reruns it (nor the
        # localizer models trained on its output)
        instances="results/metadata/train/instances.parquet",
        series="results/metadata/train/series.parquet",
        coordinates=dataset_file("train_label_coordinates.csv"),
        code=script_code("axial_xref"),
    output:
        points="results/metadata/level_points.parquet",
        xref="results/metadata/axial_xref.parquet",
    log:
        "logs/metadata/axial_xref.log",
    benchmark:
        "results/benchmarks/metadata/axial_xref.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        symmetry_refine=config["geometry"]["axial_symmetry_refine"],
    script:
        "../workflow_scripts/axial_xref.py"


rule geometry_eval:
    input:
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        xref="results/metadata/axial_xref.parquet",
        centers=str(SYNTHETIC_DIR / "level_centers.csv"),
        quirks=str(SYNTHETIC_DIR / "quirks.csv"),
        code=script_code("geometry_eval"),
    output:
        report(
            "results/eval/geometry.json", caption="../report/geometry.rst", category="Evaluation"
        ),
    log:
        "logs/eval/geometry.log",
    benchmark:
        "results/benchmarks/eval/geometry.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        foramen_offset_mm=config["geometry"]["foramen_offset_mm"],
    script:
        "../workflow_scripts/geometry_eval.py"
