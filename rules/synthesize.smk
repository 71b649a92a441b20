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


rule synthesize_train:
    input:
        shards=synthetic_shards("train"),
        code=script_code("synthesize_merge"),
    output:
        # per split, so a new test study leaves the train files (and their consumers) alone
        csvs=[str(SYNTHETIC_DIR / name) for name in SPLIT_CSVS["train"]],
        # hard links to the shards' images (os.link; copies where links are refused)
        images=directory(str(SYNTHETIC_DIR / "train_images")),
    log:
        "logs/synthesize/merge_train.log",
    benchmark:
        "results/benchmarks/synthesize/merge_train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        split="train",
    script:
        "../workflow_scripts/synthesize_merge.py"


use rule synthesize_train as synthesize_test with:
    input:
        shards=synthetic_shards("test"),
        code=script_code("synthesize_merge"),
    output:
        csvs=[str(SYNTHETIC_DIR / name) for name in SPLIT_CSVS["test"]],
        images=directory(str(SYNTHETIC_DIR / "test_images")),
    log:
        "logs/synthesize/merge_test.log",
    benchmark:
        "results/benchmarks/synthesize/merge_test.tsv"
    params:
        split="test",


rule synthesize_truth:
    input:
        train=synthetic_shards("train"),
        test=synthetic_shards("test"),
        code=script_code("synthesize_truth"),
    output:
        # the generator's ground truth (true level centres, injected quirks) for the evaluations
        [str(SYNTHETIC_DIR / name) for name in TRUTH_CSVS],
    log:
        "logs/synthesize/truth.log",
    benchmark:
        "results/benchmarks/synthesize/truth.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/synthesize_truth.py"


rule synthetic_learnability:
    input:
        dataset=[*rules.synthesize_train.output.csvs, *rules.synthesize_test.output.csvs],
        truth=rules.synthesize_truth.output,
        train_images=rules.synthesize_train.output.images,
        test_images=rules.synthesize_test.output.images,
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
