# The Self-Reward baseline (Yuan et al., 2024, adapted as montessori/self_reward.py describes): Montessori's teacher
# loop with the teacher's own rubric judgments of its candidates in place of their influence on the student.
# Iteration 1 judges the candidates teacher_0 wrote for Montessori's iteration 1 (the same seeds and samples), so
# the two loops start from one set and differ only in how they decide a preference; later iterations' candidates
# come from the Self-Reward teacher. Everything lives under results/EXPERIMENT/self_reward/iterI/.


use rule synthesize_iteration as synthesize_self_reward_iteration with:
    input:
        seeds=f"{RESULTS}/pool/seeds.parquet",
        teacher=lambda wc: teacher_input(int(wc.iteration) - 1, SELF_REWARD),
        chat_template=chat_template_input("teacher"),
    output:
        f"{SELF_REWARD_DIR}/iter{{iteration}}/candidates.parquet",
    log:
        f"{RESULTS}/logs/synthesize_self_reward_iteration/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_self_reward_iteration/iter{{iteration}}.tsv"
    wildcard_constraints:
        iteration=r"[2-9]|[1-9][0-9]+",
    params:
        teacher=lambda wc: teacher_path(int(wc.iteration) - 1, SELF_REWARD),
        iteration=lambda wc: int(wc.iteration),
        synthesis=lambda wc: synthesis_params(
            f"self_reward-iter{wc.iteration}",
            config["synthesis"]["candidates_per_prompt"],
            n_prompts=config["influence"]["n_prompts"],
        ),
        progress=f"{PROGRESS}/synthesize_self_reward_iteration/iter{{iteration}}.jsonl",


rule self_reward_judge:
    input:
        candidates=self_reward_candidates,
        # The teacher judges itself unless self_reward.judge names another judge (then its model, if local).
        judge=lambda wc: self_reward_judge(int(wc.iteration) - 1)[1],
    output:
        f"{SELF_REWARD_DIR}/iter{{iteration}}/rewards.parquet",
    log:
        f"{RESULTS}/logs/self_reward_judge/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/self_reward_judge/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["gpus"]["self_reward_judge"],
    params:
        judge=lambda wc: self_reward_judge(int(wc.iteration) - 1)[0],
        # The text, not the folder's name: editing judge.txt rejudges. (A function: Snakemake would fill a string's
        # {slots} with wildcards.)
        prompt=lambda wc: load_text(
            config["self_reward"]["prompt"], "judge.txt", ("{instruction}", "{response}"), "self_reward.prompt"
        ),
        cache=JUDGE_CACHE,
    script:
        "../scripts/self_reward_judge.py"


rule self_reward_pairs:
    input:
        candidates=self_reward_candidates,
        rewards=f"{SELF_REWARD_DIR}/iter{{iteration}}/rewards.parquet",
    output:
        f"{SELF_REWARD_DIR}/iter{{iteration}}/pairs.parquet",
    log:
        f"{RESULTS}/logs/self_reward_pairs/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/self_reward_pairs/iter{{iteration}}.tsv"
    priority: LOOP_PRIORITY
    conda:
        CONDA_ENV
    threads: LOOP_THREADS
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/self_reward_pairs.py"


use rule dpo_teacher as dpo_self_reward_teacher with:
    input:
        pairs=f"{SELF_REWARD_DIR}/iter{{iteration}}/pairs.parquet",
        teacher=lambda wc: teacher_input(int(wc.iteration) - 1, SELF_REWARD),
        chat_template=chat_template_input("teacher"),
    output:
        directory(f"{SELF_REWARD_DIR}/iter{{iteration}}/teacher"),
    log:
        f"{RESULTS}/logs/dpo_self_reward_teacher/iter{{iteration}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dpo_self_reward_teacher/iter{{iteration}}.tsv"
    params:
        teacher=lambda wc: teacher_path(int(wc.iteration) - 1, SELF_REWARD),
        dpo=config["dpo"],
        seed=config["seed"],
        chat_template=chat_template("teacher"),
