# Series metadata (header-only parse, sharded by study) and 3D geometry.


rule instances_shard:
    input:
        series=lambda w: dataset_file(f"{w.split}_series_descriptions.csv"),
        code=script_code("instances_shard"),
    output:
        "results/metadata/{split}/instances_{shard}.parquet",
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
        data_dir=lambda w, input: str(Path(input.series).parent),
        shards=config["metadata"]["shards"],
        cache_dir=lambda w: f"results/metadata/cache/{w.split}",
    script:
        "../workflow_scripts/instances_shard.py"


rule metadata:
    input:
        instances=expand(
            "results/metadata/{split}/instances_{shard}.parquet",
            split=["train", "test"],
            shard=range(config["metadata"]["shards"]),
        ),
        train_series=dataset_file("train_series_descriptions.csv"),
        test_series=dataset_file("test_series_descriptions.csv"),
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
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow_scripts/metadata.py"


rule axial_xref:
    input:
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
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
