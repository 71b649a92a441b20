# Check the active dataset (synthetic or data_dir) against the input contract.


rule dataset_record:
    input:
        csvs=[dataset_file(name) for name in SYNTHETIC_CSVS[:4]],
        instances="results/metadata/instances.parquet",
        series="results/metadata/series.parquet",
        code=code("tracking_datasets"),
    output:
        "results/tracking/datasets.json",
    params:
        data_dir=str(DATA_DIR),
        name="synthetic" if SYNTHETIC else Path(config["data_dir"]).name,
    log:
        "logs/dataset/record.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/dataset_record.py"


rule dataset_summary:
    input:
        csvs=[dataset_file(name) for name in SYNTHETIC_CSVS[:5]],
        code=code("dataset"),
    output:
        report(
            "results/dataset/summary.json",
            caption="../report/dataset_summary.rst",
            category="Dataset",
        ),
    params:
        data_dir=str(DATA_DIR),
    log:
        "logs/dataset/summary.log",
    benchmark:
        "results/benchmarks/dataset/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/dataset_summary.py"
