"""Method names: who writes each method's final training set, and its row in Table 1.

no_finetune     the untouched student (no final set, no teacher)
self_instruct   teacher_0, the untrained teacher (the paper's baseline)
strong_teacher  a stronger teacher behind an OpenAI-compatible API (the paper's GPT-4o), same prompts and filters
montessori      teacher_K, the teacher after all `iterations` of influence-guided DPO
self_reward     teacher_K of the Self-Reward loop: DPO on pairs ranked by the teacher's own judgments
llm2llm         teacher_0's set plus LLM2LLM's K rounds of examples written from what the student failed

An iterated method takes `_itI` for an earlier iteration I < K (montessori_it1 beside montessori, the paper's "it1"
row beside "it2"). They are the `method` wildcard of one DAG: `results/{experiment}/final/{method}/` and
`eval/{method}/`. The table1 view (queries/views.sql) shows METHOD_itI as the METHOD row of iteration I.
"""

from __future__ import annotations

import re
from typing import NamedTuple

NO_FINETUNE = "no_finetune"
SELF_INSTRUCT = "self_instruct"
STRONG_TEACHER = "strong_teacher"
MONTESSORI = "montessori"
SELF_REWARD = "self_reward"
LLM2LLM = "llm2llm"
# Families whose teacher (or data) improves over `iterations`; each has METHOD_itI for an earlier iteration.
ITERATED = (MONTESSORI, SELF_REWARD, LLM2LLM)
# Families whose final set a teacher writes in one synthesis job (llm2llm's grows round by round instead).
SYNTHESIZED = (SELF_INSTRUCT, STRONG_TEACHER, MONTESSORI, SELF_REWARD)
FAMILIES = (NO_FINETUNE, SELF_INSTRUCT, STRONG_TEACHER, *ITERATED)
# Every method name, as a regular expression (the schema's pattern and the DAG's wildcard constraint).
METHOD_PATTERN = rf"{NO_FINETUNE}|{SELF_INSTRUCT}|{STRONG_TEACHER}|(?:{'|'.join(ITERATED)})(?:_it[1-9][0-9]*)?"
_EARLIER = re.compile(rf"({'|'.join(ITERATED)})_it([1-9][0-9]*)")


class Method(NamedTuple):
    family: str
    # Table 1's iteration: the teacher iteration that wrote the set (montessori, self_reward), the LLM2LLM round,
    # 0 for the untrained or external teacher (self_instruct, strong_teacher), None for no_finetune.
    iteration: int | None


def parse_method(name: str, iterations: int) -> Method:
    """The family and iteration of method `name` in a run of `iterations` iterations."""
    if name == NO_FINETUNE:
        return Method(NO_FINETUNE, None)
    if name in (SELF_INSTRUCT, STRONG_TEACHER):
        return Method(name, 0)
    if name in ITERATED:
        return Method(name, iterations)
    match = _EARLIER.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(FAMILIES)}, or METHOD_itI for {ITERATED}")
    return Method(match.group(1), int(match.group(2)))


def method_name(family: str, iteration: int, iterations: int) -> str:
    """The wildcard value of an iterated family at `iteration` (the family's own name at the last one)."""
    return family if iteration == iterations else f"{family}_it{iteration}"


def method_iteration(method: str, iterations: int) -> int | None:
    """Table 1's iteration of the method (None: no_finetune has no teacher)."""
    return parse_method(method, iterations).iteration


def method_errors(config: dict) -> list[str]:
    """What a schema cannot say about the method lists of a (defaulted) config: each names its key."""
    iterations = config["iterations"]
    final, evaluated = config["final"]["methods"], config["eval"]["methods"]
    errors = []
    for key, names in (("final.methods", final), ("eval.methods", evaluated)):
        for name in names:
            match = _EARLIER.fullmatch(name)
            if match is None or int(match.group(2)) < iterations:
                continue
            family, iteration = match.group(1), int(match.group(2))
            if iteration == iterations:
                problem, fix = f"is {family}'s last iteration, i.e. {family!r}", f"use {family!r}"
            else:
                problem, fix = "is never reached", "lower it or raise 'iterations'"
            errors.append(f"config key {key!r} has {name!r}, but iteration {iteration} {problem} "
                          f"(iterations: {iterations}); {fix}")  # fmt: skip
    for name in evaluated:
        if name != NO_FINETUNE and name not in final:
            errors.append(
                f"config key 'eval.methods' has {name!r}, which has no final training set; "
                f"add it to 'final.methods' ({', '.join(map(repr, final))})"
            )
    # Every student's AlpacaEval answers, no_finetune's too, are judged against the reference outputs.
    judged = evaluated and "alpaca_eval" in config["eval"]["benchmarks"]
    if judged and config["eval"]["alpaca_eval"]["reference"] == SELF_INSTRUCT and SELF_INSTRUCT not in final:
        errors.append(
            "config key 'eval.alpaca_eval.reference' is 'self_instruct', whose student needs "
            "'self_instruct' in 'final.methods'; add it, or set the reference to 'gpt4_1106_preview'"
        )
    if STRONG_TEACHER in final and not config["models"].get("strong_teacher"):
        errors.append(
            "config key 'final.methods' has 'strong_teacher', but 'models.strong_teacher' is not set: give its "
            "{base_url, model, api_key_env} (an OpenAI-compatible endpoint)"
        )
    return errors
