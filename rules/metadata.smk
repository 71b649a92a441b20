# Series metadata (header-only parse, sharded by study) and 3D geometry.


rule instances_shard:
    input:
        series=lambda w: dataset_file(f"{w.split}_series_descriptions.csv"),
        code=code("metadata"),
    output:
        "results/metadata/{split}/instances_{shard}.parquet",
    params:
        data_dir=str(DATA_DIR),
        shards=config["metadata"]["shards"],
        cache_dir=lambda w: f"results/metadata/cache/{w.split}",
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    log:
        "logs/metadata/instances_{split}_{shard}.log",
    benchmark:
        "results/benchmarks/metadata/instances_{split}_{shard}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/pipeline.yaml"
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
        code=code("metadata", "geometry"),
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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/metadata.py"


rule axial_xref:
    input:
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        coordinates=dataset_file("train_label_coordinates.csv"),
        code=code("xref", "geometry", "pixels"),
    output:
        points="results/metadata/level_points.parquet",
        xref="results/metadata/axial_xref.parquet",
    params:
        symmetry_refine=config["geometry"]["axial_symmetry_refine"],
    log:
        "logs/metadata/axial_xref.log",
    benchmark:
        "results/benchmarks/metadata/axial_xref.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/axial_xref.py"


rule geometry_eval:
    input:
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        xref="results/metadata/axial_xref.parquet",
        centers=str(SYNTHETIC_DIR / "level_centers.csv"),
        quirks=str(SYNTHETIC_DIR / "quirks.csv"),
        code=code("geometry_eval", "xref"),
    output:
        report("results/eval/geometry.json", caption="../report/geometry.rst", category="Evaluation"),
    params:
        foramen_offset_mm=config["geometry"]["foramen_offset_mm"],
    log:
        "logs/eval/geometry.log",
    benchmark:
        "results/benchmarks/eval/geometry.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/geometry_eval.py"
