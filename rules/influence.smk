# Local influence of each candidate: one AdamW step from the warm student, reference loss before - after
# (influence.mode: exact takes the step, first_order its first-order estimate).
# Scattered into shards (`--set-scatter influence=N`), each a GPU job on a cluster, then gathered.


rule influence_shard:
    input:
        candidates=f"{RESULTS}/iter{{iteration}}/candidates.parquet",
        reference=f"{RESULTS}/pool/reference.parquet",
        student=f"{RESULTS}/warmup/student",
    output:
        f"{RESULTS}/iter{{iteration}}/influence/{{scatteritem}}.parquet",
    log:
        f"{RESULTS}/logs/influence_shard/iter{{iteration}}-{{scatteritem}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/influence_shard/iter{{iteration}}-{{scatteritem}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=config["gpus"]["influence_shard"],
    params:
        influence=config["influence"],
        seed=config["seed"],
        chat_template=chat_template("student"),
        progress=f"{PROGRESS}/influence_shard/iter{{iteration}}-{{scatteritem}}.jsonl",
    script:
        "../scripts/influence_shard.py"


rule gather_influence:
    input:
        gather.influence(f"{RESULTS}/iter{{{{iteration}}}}/influence/{{scatteritem}}.parquet"),
    output:
        f"{RESULTS}/iter{{iteration}}/influence.parquet",
    log:
        f"{RESULTS}/logs/gather_influence/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gather_influence/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/gather_influence.py"
