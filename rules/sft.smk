# Each method's final training set fine-tunes a fresh copy of the student (TRL SFTTrainer).


rule sft_student:
    input:
        train=f"{RESULTS}/final/{{method}}/train.parquet",
        student=model_input(config["models"]["student"]),
        chat_template=chat_template_input("student"),
    output:
        directory(f"{RESULTS}/final/{{method}}/student"),
    log:
        f"{RESULTS}/logs/sft_student/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sft_student/{{method}}.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=config["gpus"]["sft_student"],
    params:
        student=lambda wc: model_path(config["models"]["student"]),
        sft=config["sft"],
        seed=config["seed"],
        chat_template=chat_template("student"),
    script:
        "../scripts/sft_student.py"
