# The start of the teacher loop: the seed pool the teacher draws in-context examples from, and the reference
# set local influence measures against. Loop jobs (priority and two threads: rules/common.smk).


rule pool_seeds:
    input:
        config["data"]["seed_files"],
    output:
        f"{RESULTS}/pool/seeds.parquet",
    log:
        f"{RESULTS}/logs/pool_seeds.log",
    benchmark:
        f"{RESULTS}/benchmarks/pool_seeds.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=config["seed"],
    script:
        "../scripts/pool_seeds.py"


rule reference_set:
    input:
        config["data"]["reference_file"],
    output:
        f"{RESULTS}/pool/reference.parquet",
    log:
        f"{RESULTS}/logs/reference_set.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_set.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        n=config["data"]["n_reference"],
    script:
        "../scripts/reference_set.py"


rule snapshot_config:
    """The validated config (defaults filled in) beside the results, for lineage and the experiments table."""
    output:
        f"{RESULTS}/config.yaml",
    log:
        f"{RESULTS}/logs/snapshot_config.log",
    benchmark:
        f"{RESULTS}/benchmarks/snapshot_config.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=2,
    params:
        config=config,
    script:
        "../scripts/snapshot_config.py"
