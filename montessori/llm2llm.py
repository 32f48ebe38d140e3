"""LLM2LLM (Lee et al., 2024, "LLM2LLM: Boosting LLMs with Novel Iterative Data Enhancement") as a baseline.

LLM2LLM grows a student's training data where the student fails. Its seed data D_0 here is the untrained
teacher's final set (self_instruct's train.parquet), and S_1 the student trained on it. Round i:
  1. test: S_i answers every instruction of D_0 (greedy), and a judge compares each answer with the example's
     own response (reference-guided grading, prompts/llm2llm/grade.txt) and answers "correct" or "incorrect".
     LLM2LLM's tasks have gold answers checked exactly; open-ended instructions have none, so the example's
     response is the gold answer and the judge does the checking. The verdict is read from the judge's
     probabilities of the two words as the first token of its reply (montessori.judges.first_token), so a small
     judge that does not answer in one word still decides. The student passes when P(correct) among the two
     exceeds `llm2llm.pass_threshold` (0.5: "correct" is the likelier) and fails otherwise, as an answer LLM2LLM
     cannot match counts as wrong.
  2. augment: for every failed example the teacher writes one new example that practises the same skill
     (prompts/llm2llm/augment.txt shows it the failed instruction): it samples synthesis.candidates_per_prompt
     instructions, filtered like every synthesis (including ROUGE-L novelty against all of D_{i-1}), answers the
     accepted ones, and the first usable one is the new example; a failure left without one is prompted again,
     up to synthesis.max_prompts_factor times. (LLM2LLM's API teacher writes one that passes almost always;
     sampling and retrying keeps a small teacher, which fails the format often, from writing none.)
  3. D_i = D_{i-1} + the new examples; S_{i+1} is the student trained from scratch on D_i.
As in LLM2LLM, only D_0's examples are tested, never augmented ones (which keeps later rounds from drifting away
from the seed data), and the teacher is never trained. The final set of `llm2llm` is D_K; `llm2llm_itI` is D_I.
"""

from __future__ import annotations

import pandas as pd

from montessori.filters import OK
from montessori.generate import Generator, Sampling
from montessori.prompts import TeacherPrompt
from montessori.synthesize import COLUMNS, Synthesis, SynthesisPlan

INSTRUCTION_SLOT, REFERENCE_SLOT, ANSWER_SLOT = "{instruction}", "{reference}", "{answer}"
CORRECT, INCORRECT = "correct", "incorrect"
TEST_COLUMNS = [
    "candidate_id", "prompt_id", "iteration", "instruction", "reference", "answer", "answer_finish_reason",
    "judgment", "p_correct", "verdict", "failed", "judge",
]  # fmt: skip


def grade_messages(template: str, instruction: str, reference: str, answer: str) -> list[dict[str, str]]:
    text = template.replace(INSTRUCTION_SLOT, instruction).replace(REFERENCE_SLOT, reference)
    return [{"role": "user", "content": text.replace(ANSWER_SLOT, answer)}]


def verdict(probabilities: dict[str, float], threshold: float = 0.5) -> tuple[str | None, float]:
    """The verdict ("correct" when the judge's normalised first-token P(correct) exceeds `threshold`, else
    "incorrect") with P(correct); (None, NaN) without any probability."""
    if not probabilities:
        return None, float("nan")
    p_correct = probabilities[CORRECT]
    return (CORRECT if p_correct > threshold else INCORRECT), p_correct


def student_answers(generator: Generator, seed_set: pd.DataFrame, max_tokens: int, seed: int) -> list:
    """The student's greedy answer to every instruction of the seed set, in order (Completions)."""
    conversations = [[{"role": "user", "content": text}] for text in seed_set["instruction"]]
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, seed=seed)
    return [samples[0] for samples in generator.generate(conversations, sampling, desc="student answers")]


def grading_frame(
    seed_set: pd.DataFrame,
    answers: list,
    probabilities: list[dict[str, float]],
    texts: list[str],
    iteration: int,
    judge: str,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """TEST_COLUMNS: each seed example, the student's answer, the judge's first token and verdict (P(correct)
    above `threshold`), and whether the student failed (any verdict but "correct")."""
    verdicts = [verdict(p, threshold) for p in probabilities]
    return pd.DataFrame(
        {
            "candidate_id": seed_set["candidate_id"].to_numpy(),
            "prompt_id": seed_set["prompt_id"].to_numpy(),
            "iteration": iteration,
            "instruction": seed_set["instruction"].to_numpy(),
            "reference": seed_set["response"].to_numpy(),
            "answer": [a.text.strip() for a in answers],
            "answer_finish_reason": [a.finish_reason for a in answers],
            "judgment": texts,
            "p_correct": [p for _, p in verdicts],
            "verdict": [v for v, _ in verdicts],
            "failed": [v != CORRECT for v, _ in verdicts],
            "judge": judge,
        },
        columns=TEST_COLUMNS,
    )


def augment(
    generator: Generator,
    failed: pd.DataFrame,
    train: pd.DataFrame,
    prompt: TeacherPrompt,
    synthesis: dict,
    iteration: int,
    batch_size: int,
    seed: int,
) -> pd.DataFrame:
    """The teacher's candidates for the failed examples (`failed`: rows of D_0 with their seed_ids):
    candidates.parquet's columns plus `augmented_from`, the failed example's candidate_id.

    Each round prompts once (synthesis.candidates_per_prompt samples) for every failed example that has no usable
    new example yet, until each has one or has had synthesis.max_prompts_factor prompts (the budget a synthesis
    allows per example). New instructions must be novel against every instruction of `train` (D_{i-1}) and
    against their failed example."""
    budget = synthesis["max_prompts_factor"]
    plan = SynthesisPlan(
        stage=f"llm2llm-iter{iteration}",
        iteration=iteration,
        candidates_per_prompt=synthesis["candidates_per_prompt"],
        n_examples=max(len(failed), 1),
        max_prompts_factor=budget,
    )
    no_seeds = pd.DataFrame({"seed_text": [], "seed_id": []})
    job = Synthesis(generator, no_seeds, plan, synthesis, prompt, batch_size, seed)
    state = job.new_state()
    state.rouge.remember(train["instruction"].tolist())
    pending = list(failed.itertuples(index=False))
    for _ in range(budget):
        if not pending:
            break
        rows = job.ask(state, [[parent.instruction] for parent in pending])
        # A round's prompts are its pending examples', in order; each of a prompt's samples descends from its one.
        parents = dict(zip(dict.fromkeys(row["prompt_id"] for row in rows), pending))
        for row in rows:
            parent = parents[row["prompt_id"]]
            row.update(seed_ids=list(parent.seed_ids), augmented_from=parent.candidate_id)
        helped = {row["augmented_from"] for row in rows if row["verdict"] == OK}
        pending = [parent for parent in pending if parent.candidate_id not in helped]
    candidates = job.frame(state)
    candidates["augmented_from"] = [row["augmented_from"] for row in state.rows]
    return candidates[[*COLUMNS, "augmented_from"]]


def grown_set(previous: pd.DataFrame, candidates: pd.DataFrame, training_columns: list[str]) -> pd.DataFrame:
    """D_i: D_{i-1} followed by one new example per failed example that got a usable one (its first), each with
    the example it was written from."""
    previous = previous.copy()
    if "augmented_from" not in previous.columns:
        previous["augmented_from"] = None
    new = candidates[candidates["verdict"] == OK].groupby("augmented_from", sort=False).head(1)
    columns = [*training_columns, "augmented_from"]
    return pd.concat([previous[columns], new[columns]], ignore_index=True)
