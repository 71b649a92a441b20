# Check the active dataset (synthetic or data_dir) against the input contract.


rule dataset_summary:
    input:
        csvs=[dataset_file(name) for name in SYNTHETIC_CSVS[:5]],
        code=script_code("dataset_summary"),
    output:
        report(
            "results/dataset/summary.json",
            caption="../report/dataset_summary.rst",
            category="Dataset",
        ),
    log:
        "logs/dataset/summary.log",
    benchmark:
        "results/benchmarks/dataset/summary.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data_dir=lambda w, input: str(Path(input.csvs[0]).parent),
    script:
        "../workflow_scripts/dataset_summary.py"
