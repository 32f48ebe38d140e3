# Teacher DPO: teacher_{i-1} learns to prefer the raw outputs whose instructions helped the student.


rule dpo_teacher:
    input:
        pairs=f"{RESULTS}/iter{{iteration}}/pairs.parquet",
        teacher=lambda wc: teacher_input(int(wc.iteration) - 1),
        chat_template=chat_template_input("teacher"),
    output:
        directory(f"{RESULTS}/iter{{iteration}}/teacher"),
    log:
        f"{RESULTS}/logs/dpo_teacher/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dpo_teacher/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=config["gpus"]["dpo_teacher"],
    params:
        teacher=lambda wc: teacher_path(int(wc.iteration) - 1),
        dpo=config["dpo"],
        seed=config["seed"],
        chat_template=chat_template("teacher"),
    script:
        "../scripts/dpo_teacher.py"
