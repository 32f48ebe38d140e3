# Preference pairs: among the candidates of one teacher prompt, every helpful x harmful combination.


rule pairs:
    input:
        candidates=f"{RESULTS}/iter{{iteration}}/candidates.parquet",
        influence=f"{RESULTS}/iter{{iteration}}/influence.parquet",
    output:
        f"{RESULTS}/iter{{iteration}}/pairs.parquet",
    log:
        f"{RESULTS}/logs/pairs/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pairs/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/pairs.py"
