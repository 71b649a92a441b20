# The trained pipeline as one portable folder (results/bundle/): every localizer and severity
# fold model (and its ONNX export), temperatures, priors, inference settings, model card and
# manifest; graded with predict.bundle (Snakefile) or through MLflow (rule register_model).


rule priors:
    input:
        labels=dataset_file("train.csv"),
        code=script_code("priors"),
    output:
        "results/train/priors.csv",
    log:
        "logs/train/priors.log",
    benchmark:
        "results/benchmarks/train/priors.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/priors.py"


rule bundle:
    input:
        localizers=localizer_checkpoints(),
        # the submission's models (the comparison all-series model is not one of them)
        severity=expand(
            "results/train/models/{family}_fold{fold}.pt",
            family=config["train"]["families"],
            fold=range(config["folds"]["n"]),
        ),
        temperatures="results/train/temperatures.json",
        labels=dataset_file("train.csv"),
        cv="results/eval/cv.json",
        dataset="results/tracking/datasets_train.json",
        code=script_code("bundle"),
    output:
        directory("results/bundle"),
    log:
        "logs/bundle.log",
    benchmark:
        "results/benchmarks/bundle.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=SETTINGS,
        # the weights files the models started from (provenance in the manifest and card)
        weights={
            "localize.point_model.weights": config["localize"]["point_model"]["weights"],
            "localize.slice_model.weights": config["localize"]["slice_model"]["weights"],
            "train.weights": config["train"]["weights"],
        },
    script:
        "../workflow_scripts/bundle.py"
