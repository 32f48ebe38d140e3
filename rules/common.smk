import os

from montessori.models import BUILTIN_MODELS

RESULTS = f"results/{config['experiment']}"
ITERATIONS = list(range(1, config["iterations"] + 1))


wildcard_constraints:
    iteration=r"[1-9][0-9]*",
    method="|".join(config["final"]["methods"]),
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


def teacher_path(iteration):
    """teacher_0 is the untrained teacher; teacher_i comes out of iteration i's DPO."""
    iteration = int(iteration)
    if iteration == 0:
        return model_path(config["models"]["teacher"])
    return f"{RESULTS}/iter{iteration}/teacher"


def teacher_input(iteration):
    return model_input(config["models"]["teacher"]) if int(iteration) == 0 else [teacher_path(iteration)]


def final_teacher_iteration(method):
    return config["iterations"] if method == "montessori" else 0


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
    }
