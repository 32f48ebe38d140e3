# The student is warmed up on the untrained teacher's data; its weights AND AdamW state are what every
# influence step starts from.


rule warmup_student:
    input:
        candidates=f"{RESULTS}/warmup/candidates.parquet",
        student=model_input(config["models"]["student"]),
        chat_template=chat_template_input("student"),
    output:
        directory(f"{RESULTS}/warmup/student"),
    log:
        f"{RESULTS}/logs/warmup_student.log",
    benchmark:
        f"{RESULTS}/benchmarks/warmup_student.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["gpus"]["warmup_student"],
    params:
        student=lambda wc: model_path(config["models"]["student"]),
        warmup=config["warmup"],
        seed=config["seed"],
        chat_template=chat_template("student"),
    script:
        "../scripts/warmup_student.py"
