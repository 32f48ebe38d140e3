"""Synthesis orchestration (rounds, lineage, verdicts) with a scripted teacher; the real teacher runs in the
end-to-end test (tests/test_pipeline.py)."""

import logging
import re

import pandas as pd
import pytest

from montessori.config import validate_config
from montessori.generate import Completion
from montessori.pairs import pairable
from montessori.prompts import TeacherPrompt, load_prompt
from montessori.synthesize import (
    ShortSetError,
    SynthesisPlan,
    prompts_still_needed,
    synthesize,
    training_set,
)

SEEDS = pd.DataFrame(
    {
        "seed_id": [f"s{i:03d}" for i in range(20)],
        "seed_text": [f"Seed task number {i} about topic {i}." for i in range(20)],
    }
)
TOPICS = ["tides", "volcanoes", "bread", "chess", "rainbows", "glaciers", "violins", "comets", "bees", "deserts"]


class ScriptedTeacher:
    """A Generator whose k-th instruction sample (over the whole run) is script(k), or script(k, prompt) for a
    two-argument script, and whose answer to an instruction is answer(instruction); an answer ending in "..."
    was cut off at max_tokens. Prompt and completion token counts are word counts."""

    model_path = "scripted-teacher"

    def __init__(self, script, answer=lambda instruction: f"An answer to: {instruction}"):
        self.script, self.answer = script, answer
        self.with_prompt = script.__code__.co_argcount == 2
        self.samples = 0
        self.instruction_calls: list[int] = []

    def generate(self, conversations, sampling, desc="generate"):
        results = []
        responding = desc == "responses"
        if not responding:
            self.instruction_calls.append(len(conversations))
        for conversation in conversations:
            prompt = conversation[-1]["content"]
            if responding:
                texts = [self.answer(prompt)]
            else:
                texts = []
                for _ in range(sampling.n):
                    texts.append(self.script(self.samples, prompt) if self.with_prompt else self.script(self.samples))
                    self.samples += 1
            results.append(
                [
                    Completion(t, len(prompt.split()), len(t.split()), "length" if t.endswith("...") else "stop")
                    for t in texts
                ]
            )
        return results

    def close(self):
        pass


def tagged(k: int) -> str:
    topic = TOPICS[k % len(TOPICS)]
    # Every sample stays below the ROUGE-L threshold of every other (at most 5 of 10 words shared).
    return f"A new topic.\n<instruction>Describe {topic} in {k + 2} short sentences (k{k}a k{k}b k{k}c).</instruction>"


@pytest.fixture
def synthesis():
    return validate_config({})["synthesis"]


PROMPT = TeacherPrompt(**load_prompt("smollm2"))


def run(teacher, plan, synthesis, batch_size=4, **kwargs):
    return synthesize(teacher, SEEDS, plan, synthesis, PROMPT, batch_size=batch_size, seed=0, **kwargs)


def test_fixed_prompt_count_keeps_every_candidate_with_its_lineage(synthesis):
    teacher = ScriptedTeacher(tagged)
    plan = SynthesisPlan(stage="iter1", iteration=1, candidates_per_prompt=4, n_prompts=6)
    candidates = run(teacher, plan, synthesis)
    assert len(candidates) == 24 and teacher.instruction_calls == [4, 2]
    assert candidates["prompt_id"].value_counts().eq(4).all()
    assert candidates["candidate_id"].iloc[:5].tolist() == [
        "iter1-p00000-c0", "iter1-p00000-c1", "iter1-p00000-c2", "iter1-p00000-c3", "iter1-p00001-c0",
    ]  # fmt: skip
    assert (candidates["iteration"] == 1).all() and (candidates["teacher"] == "scripted-teacher").all()
    assert set(candidates.explode("seed_ids")["seed_ids"]) <= set(SEEDS["seed_id"])
    # The first round sees seeds only; once two instructions exist, 6 seeds + 2 generations.
    first, second = (
        candidates[candidates["prompt_id"] < "iter1-p00004"],
        candidates[candidates["prompt_id"] >= "iter1-p00004"],
    )
    assert (first["n_generated_in_context"] == 0).all() and first["seed_ids"].map(len).eq(8).all()
    assert (second["n_generated_in_context"] == 2).all() and second["seed_ids"].map(len).eq(6).all()
    assert candidates["raw_output"].iloc[0] == tagged(0)
    assert candidates["instruction"].iloc[0] == "Describe tides in 2 short sentences (k0a k0b k0c)."


def test_bad_teacher_outputs_get_verdicts_not_crashes(synthesis):
    outputs = [
        "I cannot think of one.",  # no tag
        "<instruction>Explain how tides form.</instruction>",
        "<instruction>Explain how tides form!</instruction>",  # a near-duplicate of the one before
        "<instruction>Draw a picture of a cat.</instruction>",  # banned word
        "<instruction>Describe a silent answer.</instruction>",  # the teacher answers with nothing
        "<instruction>Write a very long essay.</instruction>",  # the answer overflows max_example_tokens
        "<instruction>Hi.</instruction>",  # too short
        "<instruction>¿Qué hora es en Madrid?</instruction>",  # non-ASCII start
        "<instruction>Tell a story about a dragon.</instruction>",  # the answer is cut off at max_tokens
        "COPY",  # a copy of the prompt's first in-context example
        "<instruction>Unclosed, as small teachers write it.",  # strict parsing reads closed pairs only
    ]

    def script(k, prompt):
        if outputs[k] == "COPY":
            return f"<instruction>{re.search('<instruction>(.*?)</instruction>', prompt).group(1)}</instruction>"
        return outputs[k]

    def answer(instruction):
        if "silent" in instruction:
            return "   "
        if "long essay" in instruction:
            return "word " * 200
        if "dragon" in instruction:
            return "Once upon a time..."
        return "Fine."

    synthesis["max_example_tokens"] = 100
    plan = SynthesisPlan(
        stage="iter1", iteration=1, candidates_per_prompt=len(outputs), n_prompts=1, max_prompts_factor=1
    )
    candidates = run(ScriptedTeacher(script, answer), plan, synthesis)
    assert candidates["verdict"].tolist() == [
        "no_instruction", "ok", "similar_to_accepted", "banned_word", "empty_response", "too_long", "too_short",
        "bad_start", "truncated", "similar_to_in_context", "no_instruction",
    ]  # fmt: skip
    assert candidates.loc[2, "rouge_l"] > 0.7
    assert (candidates.loc[2, "rouge_l_match"], candidates.loc[2, "rouge_l_source"]) == (
        "Explain how tides form.", "accepted"
    )  # fmt: skip
    assert candidates.loc[9, "rouge_l"] == 1.0 and candidates.loc[9, "rouge_l_source"] == "in_context"
    assert candidates.loc[9, "rouge_l_match"] in SEEDS["seed_text"].tolist()
    assert candidates.loc[8, "response_finish_reason"] == "length"
    assert candidates["response"].notna().tolist() == [
        False, True, False, False, True, True, False, False, True, False, False,
    ]  # fmt: skip
    assert training_set(candidates, 1, "t")["candidate_id"].tolist() == ["iter1-p00000-c1"]
    with pytest.raises(ShortSetError, match=r"final/x/train.parquet: 1 of the 10 examples asked for after 1 prompts"):
        training_set(candidates, 10, "final/x/train.parquet")
    assert len(training_set(candidates, 10, "warm-up", exact=False)) == 1
    synthesis["parse"] = "lenient"
    lenient = run(ScriptedTeacher(script, answer), plan, synthesis)
    assert lenient["instruction"].iloc[-1] == "Unclosed, as small teachers write it."


def test_example_count_sizes_rounds_to_what_is_missing(synthesis):
    # Every second sample is tagged: the first round of 2 / 0.5 = 4 prompts yields 2, then 2 / 0.5 = 4 more.
    teacher = ScriptedTeacher(lambda k: tagged(k) if k % 2 else "no tag here")
    plan = SynthesisPlan(stage="final", iteration=0, candidates_per_prompt=1, n_examples=4)
    candidates = run(teacher, plan, synthesis, batch_size=64)
    assert teacher.instruction_calls == [8]  # prior rate 0.5: 4 missing -> 8 prompts
    assert (candidates["verdict"] == "ok").sum() == 4
    assert len(training_set(candidates, 4, "final")) == 4


def test_a_final_set_keeps_prompting_until_its_answers_are_usable_too(synthesis):
    # Every instruction is novel and passes the filters, but three answers in four are cut off at max_tokens.
    def unique(k):
        return "<instruction>" + " ".join(f"w{k}x{j}" for j in range(5)) + f" n{k}</instruction>"

    def answer(instruction):
        return "Cut..." if int(instruction.rsplit(" n", 1)[1]) % 4 else "Ok."

    teacher = ScriptedTeacher(unique, answer)
    plan = SynthesisPlan(stage="final", iteration=0, candidates_per_prompt=1, n_examples=4)
    candidates = run(teacher, plan, synthesis, batch_size=64)
    assert (candidates["verdict"] == "ok").sum() == 4 and (candidates["verdict"] == "truncated").sum() >= 6
    assert len(teacher.instruction_calls) >= 2


def test_rounds_replayed_from_saved_rows_give_the_same_candidates(synthesis):
    """What a resumed job does: the finished rounds' rows come back, the teacher is asked only for the rest."""
    plan = SynthesisPlan(stage="iter1", iteration=1, candidates_per_prompt=2, n_prompts=10)
    rounds = []
    uninterrupted = run(ScriptedTeacher(tagged), plan, synthesis, after_round=rounds.append)
    assert [len(r) for r in rounds] == [8, 8, 4]
    teacher = ScriptedTeacher(lambda k: tagged(k + 16))  # the samples the teacher wrote after two rounds
    resumed = run(teacher, plan, synthesis, done_rounds=rounds[:2])
    assert teacher.instruction_calls == [2]
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_a_teacher_that_never_follows_the_format_stops_at_the_prompt_budget(synthesis, caplog):
    teacher = ScriptedTeacher(lambda k: "no tag here")
    plan = SynthesisPlan(stage="warmup", iteration=0, candidates_per_prompt=1, n_examples=3)
    with caplog.at_level(logging.WARNING):
        candidates = run(teacher, plan, synthesis, batch_size=64)
    assert len(candidates) == 3 * plan.max_prompts_factor and sum(teacher.instruction_calls) == 12
    assert (candidates["verdict"] == "no_instruction").all() and candidates["response"].isna().all()
    assert "only 0 of 3 usable candidates after 12 prompts" in caplog.text


def test_an_iteration_prompts_until_enough_prompts_can_form_a_pair(synthesis, caplog):
    def unique(k):
        return "<instruction>" + " ".join(f"w{k}x{j}" for j in range(5)) + "</instruction>"

    # One usable sample in four for the first 8 prompts (none pairable), then every sample is usable.
    teacher = ScriptedTeacher(lambda k: unique(k) if k % 4 == 0 or k >= 32 else "no tag here")
    plan = SynthesisPlan(stage="iter1", iteration=1, candidates_per_prompt=4, n_prompts=3)
    candidates = run(teacher, plan, synthesis, batch_size=4)
    # Rounds of 4 within the budget of 3 x 4 = 12 prompts; the third round's 4 prompts are all pairable.
    assert teacher.instruction_calls == [4, 4, 4]
    usable = candidates[candidates["verdict"] == "ok"].groupby("prompt_id").size()
    assert usable.max() == 4 and (usable >= 2).sum() == 4
    kept = pairable(candidates)
    assert set(kept["prompt_id"]) == set(usable[usable >= 2].index) and (kept["verdict"] == "ok").all()
    assert len(kept) == 16

    never = ScriptedTeacher(lambda k: unique(k) if k % 4 == 0 else "no tag here")
    with caplog.at_level(logging.WARNING):
        short = run(never, plan, synthesis, batch_size=4)
    assert sum(never.instruction_calls) == 12 and pairable(short).empty
    assert "only 0 of 3 pairable prompts after 12 prompts" in caplog.text


def test_an_iteration_needs_two_candidates_per_prompt():
    with pytest.raises(ValueError, match="at least 2 candidates per prompt"):
        SynthesisPlan(stage="iter1", iteration=1, candidates_per_prompt=1, n_prompts=4)


def test_same_seed_same_prompts(synthesis):
    plan = SynthesisPlan(stage="iter2", iteration=1, candidates_per_prompt=2, n_prompts=5)
    first = run(ScriptedTeacher(tagged), plan, synthesis)
    second = run(ScriptedTeacher(tagged), plan, synthesis)
    pd.testing.assert_frame_equal(first, second)
    other_stage = run(ScriptedTeacher(tagged), SynthesisPlan("iter3", 2, 2, n_prompts=5), synthesis)
    assert other_stage["prompt"].tolist() != first["prompt"].tolist()


@pytest.mark.parametrize(
    "n_examples, accepted, prompted, expected",
    [(16, 0, 0, 32), (16, 13, 32, 8), (16, 0, 12, 192), (16, 15, 30, 2), (10_000, 0, 0, 20_000)],
)
def test_prompts_still_needed(n_examples, accepted, prompted, expected):
    assert prompts_still_needed(n_examples, accepted, prompted) == expected


def test_plan_needs_exactly_one_size():
    with pytest.raises(ValueError, match="exactly one"):
        SynthesisPlan(stage="x", iteration=0, candidates_per_prompt=1)
    with pytest.raises(ValueError, match="exactly one"):
        SynthesisPlan(stage="x", iteration=0, candidates_per_prompt=1, n_prompts=2, n_examples=2)
