# MLflow: the experiment, each split recorded as a dataset, the registered bundle.


rule tracking_init:
    input:
        code=script_code("tracking_init"),
    output:
        "results/tracking/experiment.txt",
    log:
        "logs/tracking_init.log",
    benchmark:
        "results/benchmarks/tracking_init.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tracking=config["mlflow"],
    script:
        "../workflow_scripts/tracking_init.py"


rule dataset_record:
    input:
        # per split: a new test study leaves the training runs' record (and them) alone
        csvs=lambda w: [dataset_file(name) for name in RECORD_CSVS[w.split]],
        instances="results/metadata/{split}/instances.parquet",
        series="results/metadata/{split}/series.parquet",
        code=script_code("dataset_record"),
    output:
        "results/tracking/datasets_{split}.json",
    log:
        "logs/dataset/record_{split}.log",
    wildcard_constraints:
        split="train|test",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data_dir=lambda w, input: str(Path(input.csvs[0]).parent),
        name="synthetic" if SYNTHETIC else Path(config["data_dir"]).name,
    script:
        "../workflow_scripts/dataset_record.py"


rule register_model:
    input:
        bundle="results/bundle",
        cv="results/eval/cv.json",
        parent="results/train/parent_run.json",
        code=script_code("register_model"),
    output:
        "results/tracking/registered_model.json",
    log:
        "logs/register_model.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        tracking=config["mlflow"],
        name=config["registry"]["name"],
    script:
        "../workflow_scripts/register_model.py"
