# The paper's table: every student (untouched, Self-Instruct, Montessori) on every benchmark. lm-eval runs the
# multiple-choice and math sets; AlpacaEval 2 and MT-Bench are judged by the configured LLM judge (eval.judge, with
# each benchmark's eval.BENCHMARK.judge merged over it: the params hold that benchmark's judge only).
# One thread each: on a few CPU cores two one-thread evaluations side by side finish 15-30% sooner than one
# after the other on two threads (model loading and Python overhead do not parallelise). They only fill cores
# the teacher loop leaves idle: every loop job takes two threads (see LOOP_THREADS in rules/common.smk).
# Params hold only the config keys a job reads, so adding a method or changing one benchmark's limit reruns just
# the evaluations it concerns.


rule lm_eval:
    input:
        student=lambda wc: student_input(wc.method),
    output:
        f"{RESULTS}/eval/{{method}}/{{benchmark}}.json",
    log:
        f"{RESULTS}/logs/lm_eval/{{method}}-{{benchmark}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lm_eval/{{method}}-{{benchmark}}.tsv"
    wildcard_constraints:
        benchmark="|".join(LM_EVAL_BENCHMARKS),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=config["gpus"]["lm_eval"],
    params:
        model=lambda wc: student_path(wc.method),
        num_fewshot=lambda wc: config["eval"]["num_fewshot"][wc.benchmark],
        limit=lambda wc: config["eval"]["limit"][wc.benchmark],
        source=config["eval"]["source"],
        backend=config["eval"]["backend"],
        batch_size=config["eval"]["batch_size"],
        generation=generation_params(),
    script:
        "../scripts/lm_eval.py"


rule alpaca_eval_outputs:
    """The student's answers to the AlpacaEval items its subsets score (also the reference of the other methods)."""
    input:
        student=lambda wc: student_input(wc.method),
        # The held-out subset leaves out the influence reference set's instructions.
        reference_set=f"{RESULTS}/pool/reference.parquet",
        chat_template=chat_template_input("student"),
    output:
        f"{RESULTS}/eval/{{method}}/alpaca_eval_outputs.json",
    log:
        f"{RESULTS}/logs/alpaca_eval_outputs/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/alpaca_eval_outputs/{{method}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=config["gpus"]["alpaca_eval_outputs"],
    params:
        model=lambda wc: student_path(wc.method),
        alpaca_eval_items=alpaca_eval_items(),
        max_tokens=config["eval"]["alpaca_eval"]["max_tokens"],
        backend=config["eval"]["backend"],
        batch_size=config["eval"]["batch_size"],
        generation=generation_params(),
        chat_template=chat_template("student"),
    script:
        "../scripts/alpaca_eval_outputs.py"


rule alpaca_eval:
    input:
        outputs=f"{RESULTS}/eval/{{method}}/alpaca_eval_outputs.json",
        reference=lambda wc: alpaca_eval_reference(wc.method),
        reference_set=f"{RESULTS}/pool/reference.parquet",
        judge=judge_input("alpaca_eval"),
    output:
        f"{RESULTS}/eval/{{method}}/alpaca_eval.json",
    log:
        f"{RESULTS}/logs/alpaca_eval/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/alpaca_eval/{{method}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=config["gpus"]["alpaca_eval"],
    params:
        alpaca_eval_items=alpaca_eval_items(),
        judge=judge_params("alpaca_eval"),
        cache=JUDGE_CACHE,
    script:
        "../scripts/alpaca_eval.py"


rule mt_bench:
    input:
        student=lambda wc: student_input(wc.method),
        judge=judge_input("mt_bench"),
        chat_template=chat_template_input("student"),
    output:
        f"{RESULTS}/eval/{{method}}/mt_bench.json",
    log:
        f"{RESULTS}/logs/mt_bench/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mt_bench/{{method}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=config["gpus"]["mt_bench"],
    params:
        model=lambda wc: student_path(wc.method),
        limit=config["eval"]["limit"]["mt_bench"],
        max_tokens=config["eval"]["mt_bench"]["max_tokens"],
        judge=judge_params("mt_bench"),
        cache=JUDGE_CACHE,
        backend=config["eval"]["backend"],
        batch_size=config["eval"]["batch_size"],
        generation=generation_params(),
        chat_template=chat_template("student"),
    script:
        "../scripts/mt_bench.py"
