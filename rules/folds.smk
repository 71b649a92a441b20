# Cross-validation folds of the train studies (localizers and severity models share them).


rule folds:
    input:
        labels=dataset_file("train.csv"),
        code=script_code("folds"),
    output:
        "results/folds.parquet",
    log:
        "logs/folds.log",
    benchmark:
        "results/benchmarks/folds.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        n=config["folds"]["n"],
        seed=config["seed"],
    script:
        "../workflow_scripts/folds.py"
