# The student is warmed up on the untrained teacher's data; its weights AND AdamW state are what every
# influence step starts from.


rule warmup_student:
    input:
        candidates=f"{RESULTS}/warmup/candidates.parquet",
        student=model_input(config["models"]["student"]),
    output:
        directory(f"{RESULTS}/warmup/student"),
    params:
        student=lambda wc: model_path(config["models"]["student"]),
        warmup=config["warmup"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/warmup_student.log",
    benchmark:
        f"{RESULTS}/benchmarks/warmup_student.tsv"
    conda:
        CONDA_ENV
    priority: LOOP_PRIORITY
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    script:
        "../scripts/warmup_student.py"
