"""MT-Bench single-answer grading (1-10), as FastChat's llm_judge does it, from the vendored files in
data/mt_bench/ (questions, GPT-4 reference answers, judge prompts; see SOURCE.txt) and with our judge.

The model answers turn 1, then turn 2 with its own turn-1 answer in the conversation. The judge grades turn 1
with single-v1 (single-math-v1 with the reference answer for FastChat's NEED_REF_CATS) and turn 2 with the
-multi-turn variants, which show the whole conversation. Ratings are read with FastChat's two regexes; a judgment
without one is invalid: recorded, counted, and left out of the means, as FastChat leaves out its -1 ratings.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from statistics import mean
from typing import Any

from montessori.benchmarks.offline_data import DATA_DIR
from montessori.generate import Generator, Sampling
from montessori.io import DataError, file_provenance, read_records
from montessori.judges import Judge

MT_BENCH_DIR = DATA_DIR / "mt_bench"
QUESTION_FILE = MT_BENCH_DIR / "question.jsonl"
REFERENCE_FILE = MT_BENCH_DIR / "reference_answer_gpt-4.jsonl"
JUDGE_PROMPT_FILE = MT_BENCH_DIR / "judge_prompts.jsonl"

# FastChat's fastchat/llm_judge/common.py: the categories graded against a reference answer, the answer
# temperature per category (0.7 for any other), and the rating regexes ("[[8]]", else "[8]").
NEED_REF_CATS = ("math", "reasoning", "coding")
TEMPERATURE_BY_CATEGORY = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def load_questions(limit: int | None = None, question_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The 80 questions {question_id, category, turns: [turn 1, turn 2]}: those in `question_ids` if given, else
    the first `limit` (all if None)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for all 80 questions), got {limit}")
    questions = read_records(QUESTION_FILE, required=("category",))
    for index, question in enumerate(questions):
        turns = question.get("turns")
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns)):
            raise DataError(f"{QUESTION_FILE}:{index + 1}: 'turns' must be a list of 2 strings")
    if question_ids is None:
        return questions[:limit]
    by_id = {q["question_id"]: q for q in questions}
    unknown = [i for i in question_ids if i not in by_id]
    if unknown:
        raise ValueError(f"MT-Bench has no question(s) {unknown} (ids {min(by_id)}-{max(by_id)})")
    return [by_id[i] for i in question_ids]


def load_reference_answers() -> dict[int, list[str]]:
    """GPT-4's two reference turns by question id."""
    references = {}
    for index, record in enumerate(read_records(REFERENCE_FILE)):
        try:
            references[record["question_id"]] = list(record["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            raise DataError(f"{REFERENCE_FILE}:{index + 1}: expected question_id and choices[0].turns") from None
    return references


def load_judge_prompts() -> dict[str, dict[str, Any]]:
    records = read_records(JUDGE_PROMPT_FILE, required=("name", "system_prompt", "prompt_template"))
    return {p["name"]: p for p in records}


def parse_rating(judgment: str) -> float | None:
    """FastChat's reading of a "[[rating]]" judgment; None where FastChat records -1 (no rating found)."""
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    return float(ast.literal_eval(match.group(1))) if match else None


def generate_answers(
    generator: Generator, questions: list[dict[str, Any]], max_tokens: int, seed: int = 0
) -> list[list[str]]:
    """Both turns' answers per question. Each category is answered at FastChat's temperature for it; turn 2 sees
    the stripped turn-1 answer, as FastChat keeps it in the conversation."""
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(2):
        by_temperature: dict[float, list[int]] = {}
        for index, question in enumerate(questions):
            temperature = TEMPERATURE_BY_CATEGORY.get(question["category"], DEFAULT_TEMPERATURE)
            by_temperature.setdefault(temperature, []).append(index)
        for temperature, indices in sorted(by_temperature.items()):
            conversations = []
            for index in indices:
                conversation = []
                for earlier in range(turn):
                    conversation.append({"role": "user", "content": questions[index]["turns"][earlier]})
                    conversation.append({"role": "assistant", "content": answers[index][earlier]})
                conversation.append({"role": "user", "content": questions[index]["turns"][turn]})
                conversations.append(conversation)
            sampling = Sampling(temperature=temperature, top_p=1.0, max_tokens=max_tokens, seed=seed)
            completions = generator.generate(conversations, sampling, desc=f"mt_bench turn {turn + 1}")
            for index, (completion,) in zip(indices, completions):
                answers[index].append(completion.text.strip())
    return answers


def judge_messages(
    question: dict[str, Any],
    answers: list[str],
    turn: int,
    prompts: dict[str, dict[str, Any]],
    references: dict[int, list[str]],
) -> tuple[str, list[dict[str, str]]]:
    """(judge prompt name, chat messages) grading `turn` (1 or 2) of one answered question, as FastChat's
    run_judge_single builds them: the prompt's system message, then its template filled in as the user turn."""
    needs_reference = question["category"] in NEED_REF_CATS
    name = ("single-math-v1" if needs_reference else "single-v1") + ("-multi-turn" if turn == 2 else "")
    fields: dict[str, str] = {}
    if needs_reference:
        if question["question_id"] not in references:
            raise DataError(f"{REFERENCE_FILE}: no reference answer for question {question['question_id']}")
        fields["ref_answer_1"], fields["ref_answer_2"] = references[question["question_id"]]
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answers[0])
    else:
        fields.update(
            question_1=question["turns"][0], question_2=question["turns"][1], answer_1=answers[0], answer_2=answers[1]
        )
    prompt = prompts[name]
    return name, [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": prompt["prompt_template"].format(**fields)},
    ]


def _mean(values: list[float]) -> float | None:
    return mean(values) if values else None


def run_mt_bench(
    generator: Generator,
    judge: Judge,
    limit: int | None = None,
    max_tokens: int = 1024,
    question_ids: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """MT-Bench of `generator`'s model, graded by `judge` (at its own judge.max_tokens; FastChat uses 2048).

    `max_tokens` caps each answer (FastChat's default is 1024). Scores are means over valid ratings: `score` over
    both turns, `score_turn1`/`score_turn2` per turn, and per category. Returns them with the answers and the
    judgments under "items".
    """
    questions = load_questions(limit, question_ids)
    prompts = load_judge_prompts()
    references = load_reference_answers()
    answers = generate_answers(generator, questions, max_tokens, seed)
    graded = [
        (question, turn, answer, *judge_messages(question, answer, turn, prompts, references))
        for question, answer in zip(questions, answers)
        for turn in (1, 2)
    ]
    judgments = judge.judge_many([messages for *_, messages in graded], desc="mt_bench judge")

    items = []
    ratings: dict[int, list[float]] = {1: [], 2: []}
    by_category: dict[str, list[float]] = {}
    for (question, turn, answer, prompt_name, _), judgment in zip(graded, judgments):
        rating = parse_rating(judgment.text)
        if rating is not None:
            ratings[turn].append(rating)
            by_category.setdefault(question["category"], []).append(rating)
        items.append(
            {
                "question_id": question["question_id"],
                "category": question["category"],
                "turn": turn,
                "question": question["turns"][turn - 1],
                "answer": answer[turn - 1],
                "judge_prompt": prompt_name,
                "judgment": judgment.text,
                "rating": rating,
            }
        )
    return {
        "benchmark": "mt_bench",
        "model": generator.model_path,
        "judge": judge.judge_id,
        "judge_settings": judge.settings(),
        "judge_prompts": file_provenance(JUDGE_PROMPT_FILE),
        "score": _mean(ratings[1] + ratings[2]),
        "score_turn1": _mean(ratings[1]),
        "score_turn2": _mean(ratings[2]),
        "score_by_category": {category: mean(values) for category, values in sorted(by_category.items())},
        "n_items": len(questions),
        "n_judgments": len(items),
        "n_invalid": sum(item["rating"] is None for item in items),
        "max_tokens": max_tokens,
        "judge_max_tokens": judge.config.max_tokens,
        "items": items,
    }
