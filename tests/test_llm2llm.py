"""The LLM2LLM baseline's grading, augmentation and growing set (montessori.llm2llm), with a scripted teacher; its
rules run in the end-to-end test of configs/test.yaml (tests/test_pipeline.py)."""

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


def test_the_teacher_writes_one_example_per_failure_retrying_within_the_budget_and_the_set_grows_by_them():
    synthesis = {**validate_config({})["synthesis"], "candidates_per_prompt": 2, "max_prompts_factor": 3}
    prompt = TeacherPrompt(
        instruction=load_text("llm2llm", "augment.txt", ("{examples}",), "llm2llm.prompt"),
        response=load_prompt("reference")["response"],
    )
    failed = SEED_SET[["candidate_id", "instruction", "seed_ids"]]
    samples = {
        # Never in the format: prompted in every one of the 3 rounds the budget allows, no example.
        "Name three rivers in Africa.": [["No tags here."] * 2] * 3,
        # Two usable samples in round 1: the first is the new example, and it is not prompted again.
        "What is 17 times 3?": [["<instruction>What is 23 times 4 (show the steps)?</instruction>",
                                 "<instruction>Divide 96 by 8 and explain each step.</instruction>"]],
        # Round 1: copies of its failed example, which is in the set already (the novelty filter rejects both);
        # round 2: a usable one.
        "Write a haiku about rain.": [["<instruction>Write a haiku about rain.</instruction>"] * 2,
                                      ["<instruction>Write a limerick about a cat who sails.</instruction>", "x"]],
    }  # fmt: skip
    seen = []

    def script(k, prompt):
        failed_text = next(text for text in samples if text in prompt)
        seen.append(failed_text)
        return samples[failed_text][(seen.count(failed_text) - 1) // 2][k % 2]

    candidates = augment(ScriptedTeacher(script), failed, SEED_SET, prompt, synthesis, 1, 8, 0)
    assert seen.count("Name three rivers in Africa.") == 6 and seen.count("What is 17 times 3?") == 2
    assert seen.count("Write a haiku about rain.") == 4
    by_failure = candidates.groupby("augmented_from", sort=False)["verdict"].apply(list).to_dict()
    assert by_failure == {
        "final-p00000-c0": ["no_instruction"] * 6,
        "final-p00001-c0": ["ok", "ok"],
        "final-p00002-c0": ["similar_to_accepted", "similar_to_accepted", "ok", "no_instruction"],
    }
    assert candidates["candidate_id"].is_unique
    lineage = candidates.drop_duplicates("augmented_from").set_index("augmented_from")["seed_ids"].map(list)
    assert lineage.to_dict() == {"final-p00000-c0": ["s1", "s2"], "final-p00001-c0": ["s3"],
                                 "final-p00002-c0": ["s4"]}  # fmt: skip
    assert set(candidates["stage"]) == {"llm2llm-iter1"} and set(candidates["iteration"]) == {1}
    grown = grown_set(SEED_SET, candidates, TRAINING_COLUMNS)
    assert grown["augmented_from"].tolist() == [None, None, None, "final-p00001-c0", "final-p00002-c0"]
    assert grown["instruction"].iloc[-2:].tolist() == [
        "What is 23 times 4 (show the steps)?",
        "Write a limerick about a cat who sails.",
    ]
