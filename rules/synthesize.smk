# Synthetic RSNA-format dataset (the embedded default, used when data_dir is empty).


rule synthesize_shard:
    input:
        code=script_code("synthesize_shard"),
    output:
        directory("results/synthetic/shards/{split}_{shard}"),
    log:
        "logs/synthesize/{split}_{shard}.log",
    benchmark:
        "results/benchmarks/synthesize/{split}_{shard}.tsv"
    wildcard_constraints:
        split="train|test",
        shard=r"\d{4}",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        settings=shard_settings,
    script:
        "../workflow_scripts/synthesize_shard.py"


rule synthesize:
    input:
        train=synthetic_shards("train"),
        test=synthetic_shards("test"),
        code=script_code("synthesize_merge"),
    output:
        csvs=[str(SYNTHETIC_DIR / name) for name in SYNTHETIC_CSVS],
        # hard links to the shards' images (os.link; copies where links are refused)
        train_images=directory(str(SYNTHETIC_DIR / "train_images")),
        test_images=directory(str(SYNTHETIC_DIR / "test_images")),
    log:
        "logs/synthesize/merge.log",
    benchmark:
        "results/benchmarks/synthesize/merge.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/synthesize_merge.py"


rule synthetic_learnability:
    input:
        dataset=rules.synthesize.output.csvs,
        train_images=rules.synthesize.output.train_images,
        test_images=rules.synthesize.output.test_images,
        code=script_code("synthetic_learnability"),
    output:
        report(
            "results/synthetic/learnability.json",
            caption="../report/learnability.rst",
            category="Synthetic data",
        ),
    log:
        "logs/synthesize/learnability.log",
    benchmark:
        "results/benchmarks/synthesize/learnability.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        dataset_dir=lambda w, input: str(Path(input.train_images).parent),
    script:
        "../workflow_scripts/synthetic_learnability.py"
