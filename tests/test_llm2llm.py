"""The LLM2LLM baseline's grading, augmentation and growing set (montessori.llm2llm), with a scripted teacher; its
rules run in the baselines' end-to-end test (tests/test_baselines.py)."""

import math

import pandas as pd

from montessori.config import validate_config
from montessori.generate import Completion
from montessori.llm2llm import augment, grade_messages, grading_frame, grown_set, verdict
from montessori.prompts import TeacherPrompt, load_prompt, load_text
from montessori.synthesize import TRAINING_COLUMNS
from tests.test_synthesize import ScriptedTeacher

SEED_SET = pd.DataFrame({
    "candidate_id": ["final-p00000-c0", "final-p00001-c0", "final-p00002-c0"],
    "prompt_id": ["final-p00000", "final-p00001", "final-p00002"],
    "stage": "final", "iteration": 0, "teacher": "teacher_0",
    "seed_ids": [["s1", "s2"], ["s3"], ["s4"]],
    "instruction": ["Name three rivers in Africa.", "What is 17 times 3?", "Write a haiku about rain."],
    "response": ["The Nile, the Congo and the Niger.", "51.", "Soft rain on the roof..."],
})  # fmt: skip


def test_the_likelier_word_is_the_verdict():
    assert verdict({"correct": 0.6, "incorrect": 0.4}) == ("correct", 0.6)
    assert verdict({"correct": 0.5, "incorrect": 0.5})[0] == "incorrect"  # the student must be judged correct
    assert verdict({"correct": 0.9, "incorrect": 0.1}, threshold=0.95)[0] == "incorrect"  # a stricter grader
    none, p = verdict({})
    assert none is None and math.isnan(p)


def test_an_answer_fails_unless_the_grader_says_correct():
    template = load_text("llm2llm", "grade.txt", ("{instruction}", "{reference}", "{answer}"), "llm2llm.prompt")
    (message,) = grade_messages(template, "What is 17 times 3?", "51.", "It is 41.")
    assert all(text in message["content"] for text in ("What is 17 times 3?", "51.", "It is 41."))
    answers = [Completion("The Nile.", 5, 3), Completion("41", 5, 1), Completion("Rain falls", 5, 8, "length")]
    probabilities = [{"correct": 0.9, "incorrect": 0.1}, {"correct": 0.2, "incorrect": 0.8}, {}]
    tests = grading_frame(SEED_SET, answers, probabilities, ["Correct", "Inc", "Well"], 1, "judge-id")
    assert tests["failed"].tolist() == [False, True, True]
    assert tests["verdict"].tolist() == ["correct", "incorrect", None]
    assert tests["answer_finish_reason"].tolist() == ["stop", "stop", "length"]


def test_the_teacher_writes_one_example_per_failure_and_the_set_grows_by_the_usable_ones():
    synthesis = {**validate_config({})["synthesis"], "candidates_per_prompt": 2}
    prompt = TeacherPrompt(
        instruction=load_text("llm2llm", "augment.txt", ("{examples}",), "llm2llm.prompt"),
        response=load_prompt("reference")["response"],
    )
    failed = SEED_SET.iloc[1:][["candidate_id", "instruction", "seed_ids"]]
    samples = {
        # Two usable samples: the first is the new example.
        "What is 17 times 3?": ["<instruction>What is 23 times 4 (show the steps)?</instruction>",
                                "<instruction>Divide 96 by 8 and explain each step.</instruction>"],
        # Copies of its failed example, which is in the set already: the novelty filter rejects both, none is added.
        "Write a haiku about rain.": ["<instruction>Write a haiku about rain.</instruction>"] * 2,
    }  # fmt: skip
    seen = []

    def script(k, prompt):
        seen.append(prompt)
        return next(texts[k % 2] for failed_text, texts in samples.items() if failed_text in prompt)

    candidates = augment(ScriptedTeacher(script), failed, SEED_SET, prompt, synthesis, 1, 8, 0)
    assert len(seen) == 4 and "A student could not handle this instruction" in seen[0]
    assert candidates["augmented_from"].tolist() == ["final-p00001-c0"] * 2 + ["final-p00002-c0"] * 2
    assert candidates["verdict"].tolist() == ["ok", "ok", "similar_to_accepted", "similar_to_accepted"]
    assert candidates["seed_ids"].map(list).tolist() == [["s3"], ["s3"], ["s4"], ["s4"]]  # the failures' lineage
    assert set(candidates["stage"]) == {"llm2llm-iter1"} and set(candidates["iteration"]) == {1}
    grown = grown_set(SEED_SET, candidates, TRAINING_COLUMNS)
    assert len(grown) == 4 and grown["augmented_from"].tolist() == [None, None, None, "final-p00001-c0"]
    assert grown["instruction"].iloc[-1] == "What is 23 times 4 (show the steps)?"
