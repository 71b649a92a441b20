# Synthetic RSNA-format dataset (the embedded default, used when data_dir is empty).


rule synthesize_shard:
    input:
        code=code("synth/anatomy", "synth/labels", "synth/render", "synth/series",
                  "synth/dicom_writer", "synth/generate", "geometry"),
    output:
        directory("results/synthetic/shards/{split}_{shard}"),
    params:
        settings=shard_settings,
        dataset_dir=str(SYNTHETIC_DIR),
    wildcard_constraints:
        split="train|test",
        shard=r"\d{4}",
    log:
        "logs/synthesize/{split}_{shard}.log",
    benchmark:
        "results/benchmarks/synthesize/{split}_{shard}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/synthesize_shard.py"


rule synthesize:
    input:
        train=synthetic_shards("train"),
        test=synthetic_shards("test"),
        code=code("synth/generate"),
    output:
        [str(SYNTHETIC_DIR / name) for name in SYNTHETIC_CSVS],
    params:
        dataset_dir=str(SYNTHETIC_DIR),
    log:
        "logs/synthesize/merge.log",
    benchmark:
        "results/benchmarks/synthesize/merge.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/synthesize_merge.py"


rule synthetic_learnability:
    input:
        dataset=rules.synthesize.output,
        code=code("synth/learnability", "dicom_io", "pixels", "metric"),
    output:
        report(
            "results/synthetic/learnability.json",
            caption="../report/learnability.rst",
            category="Synthetic data",
        ),
    params:
        dataset_dir=str(SYNTHETIC_DIR),
    log:
        "logs/synthesize/learnability.log",
    benchmark:
        "results/benchmarks/synthesize/learnability.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/synthetic_learnability.py"
