# Teacher synthesis: the teacher writes instructions from 8 in-context examples, the paper's filters run, and
# the same teacher answers each surviving instruction. One script serves three callers that differ only in
# which teacher writes and how much.


rule synthesize_warmup:
    input:
        seeds=f"{RESULTS}/pool/seeds.parquet",
        teacher=teacher_input(0),
        chat_template=chat_template_input("teacher"),
    output:
        f"{RESULTS}/warmup/candidates.parquet",
    log:
        f"{RESULTS}/logs/synthesize_warmup.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_warmup.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["gpus"]["synthesize_warmup"],
    params:
        teacher=lambda wc: teacher_path(0),
        iteration=0,
        synthesis=synthesis_params("warmup", 1, n_examples=config["warmup"]["n_examples"]),
        progress=f"{PROGRESS}/synthesize_warmup.jsonl",
    script:
        "../scripts/synthesize.py"


rule synthesize_iteration:
    input:
        seeds=f"{RESULTS}/pool/seeds.parquet",
        teacher=lambda wc: teacher_input(int(wc.iteration) - 1),
        chat_template=chat_template_input("teacher"),
    output:
        f"{RESULTS}/iter{{iteration}}/candidates.parquet",
    log:
        f"{RESULTS}/logs/synthesize_iteration/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_iteration/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["gpus"]["synthesize_iteration"],
    params:
        teacher=lambda wc: teacher_path(int(wc.iteration) - 1),
        iteration=lambda wc: int(wc.iteration),
        synthesis=lambda wc: synthesis_params(
            f"iter{wc.iteration}",
            config["synthesis"]["candidates_per_prompt"],
            n_prompts=config["influence"]["n_prompts"],
        ),
        progress=f"{PROGRESS}/synthesize_iteration/iter{{iteration}}.jsonl",
    script:
        "../scripts/synthesize.py"


rule synthesize_final:
    input:
        seeds=f"{RESULTS}/pool/seeds.parquet",
        teacher=lambda wc: teacher_input(*final_teacher(wc.method)),
        chat_template=chat_template_input("teacher"),
    output:
        candidates=f"{RESULTS}/final/{{method}}/candidates.parquet",
        train=f"{RESULTS}/final/{{method}}/train.parquet",
    log:
        f"{RESULTS}/logs/synthesize_final/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_final/{{method}}.tsv"
    wildcard_constraints:
        # The methods whose final set a local teacher writes (strong_teacher: rules/strong_teacher.smk; llm2llm's
        # set grows round by round: rules/llm2llm.smk).
        method=r"self_instruct|(montessori|self_reward)(_it[1-9][0-9]*)?",
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=config["gpus"]["synthesize_final"],
    params:
        teacher=lambda wc: teacher_path(*final_teacher(wc.method)),
        iteration=lambda wc: final_teacher(wc.method)[0],
        # Every method draws the same seeds (one random stream, "final"), so they differ only by teacher.
        synthesis=synthesis_params("final", 1, n_examples=config["final"]["n_examples"]),
        progress=f"{PROGRESS}/synthesize_final/{{method}}.jsonl",
    script:
        "../scripts/synthesize.py"
