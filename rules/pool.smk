# The start of the teacher loop: the seed pool the teacher draws in-context examples from, and the reference
# set local influence measures against. Loop jobs (priority and two threads: rules/common.smk).


rule pool_seeds:
    input:
        config["data"]["seed_files"],
    output:
        f"{RESULTS}/pool/seeds.parquet",
    params:
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/pool_seeds.log",
    benchmark:
        f"{RESULTS}/benchmarks/pool_seeds.tsv"
    conda:
        CONDA_ENV
    priority: LOOP_PRIORITY
    threads: LOOP_THREADS
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/pool_seeds.py"


rule reference_set:
    input:
        config["data"]["reference_file"],
    output:
        f"{RESULTS}/pool/reference.parquet",
    params:
        n=config["data"]["n_reference"],
    log:
        f"{RESULTS}/logs/reference_set.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_set.tsv"
    conda:
        CONDA_ENV
    priority: LOOP_PRIORITY
    threads: LOOP_THREADS
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/reference_set.py"


rule snapshot_config:
    """The validated config (defaults filled in) beside the results, for lineage and the experiments table."""
    output:
        f"{RESULTS}/config.yaml",
    params:
        config=config,
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
    script:
        "../scripts/snapshot_config.py"
