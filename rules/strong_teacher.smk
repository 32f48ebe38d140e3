# The stronger-teacher baseline (the paper's GPT-4o): a teacher behind any OpenAI-compatible endpoint
# (models.strong_teacher) writes the final set with the same prompts, filters and sampling as teacher_0.
# Requests are cached per request (results/teacher_cache/), so a rerun or a resumed job never pays twice.


use rule synthesize_final as synthesize_strong_teacher with:
    input:
        seeds=f"{RESULTS}/pool/seeds.parquet",
    output:
        candidates=f"{RESULTS}/final/{{method}}/candidates.parquet",
        train=f"{RESULTS}/final/{{method}}/train.parquet",
    log:
        f"{RESULTS}/logs/synthesize_final/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_final/{{method}}.tsv"
    wildcard_constraints:
        method="strong_teacher",
    resources:
        mem_mb=2000,
        runtime=1440,
        gpu=0,
    params:
        # The endpoint, model and the NAME of the key's environment variable; the key itself stays in the
        # environment of the job.
        teacher=config["models"]["strong_teacher"],
        iteration=0,
        synthesis=synthesis_params("final", 1, n_examples=config["final"]["n_examples"]),
        progress=f"{PROGRESS}/synthesize_final/{{method}}.jsonl",
        request_cache=TEACHER_CACHE,
