# The LLM2LLM baseline (Lee et al., 2024, adapted as montessori/llm2llm.py describes): the untrained teacher's
# final set D_0 (self_instruct's) grows round by round with new examples the teacher writes from the ones the
# student fails. Round I tests S_I, the student trained on D_{I-1} (S_1 is self_instruct's student, S_I the
# student of llm2llm_it{I-1}), on D_0, and its D_I is final/llm2llm_itI/train.parquet (final/llm2llm/ at I = K).


rule llm2llm_test:
    input:
        seed_set=llm2llm_set(0),
        student=lambda wc: llm2llm_student(int(wc.iteration)),
        judge=llm2llm_judge()[1],
        chat_template=chat_template_input("student"),
    output:
        f"{LLM2LLM_DIR}/iter{{iteration}}/tests.parquet",
    log:
        f"{RESULTS}/logs/llm2llm_test/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/llm2llm_test/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["gpus"]["llm2llm_test"],
    params:
        student=lambda wc: llm2llm_student(int(wc.iteration)),
        generation=generation_params(),
        chat_template=chat_template("student"),
        max_tokens=config["llm2llm"]["max_tokens"],
        pass_threshold=config["llm2llm"]["pass_threshold"],
        judge=llm2llm_judge()[0],
        # The text, not the folder's name: editing grade.txt regrades. (A function: Snakemake would fill a string's
        # {slots} with wildcards.)
        prompt=lambda wc: load_text(
            config["llm2llm"]["prompt"], "grade.txt", ("{instruction}", "{reference}", "{answer}"), "llm2llm.prompt"
        ),
        cache=JUDGE_CACHE,
    script:
        "../scripts/llm2llm_test.py"


rule llm2llm_augment:
    input:
        tests=f"{LLM2LLM_DIR}/iter{{iteration}}/tests.parquet",
        seed_set=llm2llm_set(0),
        previous=lambda wc: llm2llm_set(int(wc.iteration) - 1),
        teacher=teacher_input(0),
        chat_template=chat_template_input("teacher"),
    output:
        f"{LLM2LLM_DIR}/iter{{iteration}}/candidates.parquet",
    log:
        f"{RESULTS}/logs/llm2llm_augment/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/llm2llm_augment/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["gpus"]["llm2llm_augment"],
    params:
        teacher=lambda wc: teacher_path(0),
        synthesis=config["synthesis"],
        generation=generation_params(),
        chat_template=chat_template("teacher"),
        # The teacher's two turns: writing from a failed example (llm2llm.prompt's augment.txt) and answering
        # (synthesis.prompt's, as in every synthesis).
        prompt={
            "instruction": load_text(config["llm2llm"]["prompt"], "augment.txt", ("{examples}",), "llm2llm.prompt"),
            "response": load_prompt(config["synthesis"]["prompt"])["response"],
        },
    script:
        "../scripts/llm2llm_augment.py"


rule llm2llm_train_set:
    input:
        previous=lambda wc: llm2llm_set(llm2llm_round(wc.method) - 1),
        candidates=lambda wc: f"{LLM2LLM_DIR}/iter{llm2llm_round(wc.method)}/candidates.parquet",
    output:
        f"{RESULTS}/final/{{method}}/train.parquet",
    log:
        f"{RESULTS}/logs/llm2llm_train_set/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/llm2llm_train_set/{{method}}.tsv"
    wildcard_constraints:
        method=r"llm2llm(_it[1-9][0-9]*)?",
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/llm2llm_train_set.py"
