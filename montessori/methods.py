"""Method names, and which teacher writes each method's final training set.

no_finetune    the untouched student (no final set, no teacher)
self_instruct  teacher_0, the untrained teacher (the paper's baseline)
montessori     teacher_K, the teacher after all `iterations`
montessori_itI teacher_I for an earlier iteration I < K (the paper's "it1" row beside "it2")

They are the `method` wildcard of one DAG: `results/{experiment}/final/{method}/` and `eval/{method}/`. The
table1 view (queries/views.sql) shows montessori_itI as the montessori row of iteration I.
"""

from __future__ import annotations

import re

NO_FINETUNE = "no_finetune"
SELF_INSTRUCT = "self_instruct"
MONTESSORI = "montessori"
_EARLIER_ITERATION = re.compile(r"montessori_it([1-9][0-9]*)")


def earlier_iteration(method: str) -> int | None:
    """I of `montessori_itI`, else None."""
    match = _EARLIER_ITERATION.fullmatch(method)
    return int(match.group(1)) if match else None


def teacher_iteration(method: str, iterations: int) -> int | None:
    """The teacher iteration that writes the method's final set (None: no_finetune has no teacher)."""
    if method == NO_FINETUNE:
        return None
    if method == SELF_INSTRUCT:
        return 0
    if method == MONTESSORI:
        return iterations
    iteration = earlier_iteration(method)
    if iteration is None:
        raise ValueError(f"unknown method {method!r}; methods: no_finetune, self_instruct, montessori, montessori_itI")
    return iteration


def method_errors(config: dict) -> list[str]:
    """What a schema cannot say about the method lists of a (defaulted) config: each names its key."""
    iterations = config["iterations"]
    final, evaluated = config["final"]["methods"], config["eval"]["methods"]
    errors = []
    for key, names in (("final.methods", final), ("eval.methods", evaluated)):
        for method in names:
            iteration = earlier_iteration(method)
            if iteration is None or iteration < iterations:
                continue
            if iteration == iterations:
                problem, fix = "is teacher_K, i.e. montessori", "use 'montessori'"
            else:
                problem, fix = "is never trained", "lower it or raise 'iterations'"
            errors.append(
                f"config key {key!r} has {method!r}, but teacher_{iteration} {problem} "
                f"(iterations: {iterations}); {fix}"
            )
    for method in evaluated:
        if method != NO_FINETUNE and method not in final:
            errors.append(
                f"config key 'eval.methods' has {method!r}, which has no final training set; "
                f"add it to 'final.methods' ({', '.join(map(repr, final))})"
            )
    # Every student's AlpacaEval answers, no_finetune's too, are judged against the reference outputs.
    judged = evaluated and "alpaca_eval" in config["eval"]["benchmarks"]
    if judged and config["eval"]["alpaca_eval"]["reference"] == SELF_INSTRUCT and SELF_INSTRUCT not in final:
        errors.append(
            "config key 'eval.alpaca_eval.reference' is 'self_instruct', whose student needs "
            "'self_instruct' in 'final.methods'; add it, or set the reference to 'gpt4_1106_preview'"
        )
    return errors
