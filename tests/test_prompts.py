import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from montessori.prompts import TeacherPrompt, choose_in_context, load_prompt, parse_instruction
from tests.conftest import ROOT

SEEDS = [f"seed instruction {i}" for i in range(20)]
GENERATED = [f"generated instruction {i}" for i in range(5)]


@pytest.mark.parametrize("name", ["reference", "smollm2"])
def test_instruction_turn_is_one_user_turn_with_tagged_examples_in_order(name):
    examples = ["  Name three fruits. ", "Sort these numbers: 3, 1, 2", "Multi\nline example"]
    (message,) = TeacherPrompt(**load_prompt(name)).instruction_turn(examples)
    assert message["role"] == "user"
    content = message["content"]
    tagged = ["<instruction>Name three fruits.</instruction>", "<instruction>Sort these numbers: 3, 1, 2</instruction>",
              "<instruction>Multi\nline example</instruction>"]  # fmt: skip
    positions = [content.index(t) for t in tagged]
    assert positions == sorted(positions)
    assert "{" not in content and "}" not in content


def test_the_reference_prompt_asks_first_and_the_smollm2_prompt_ends_with_the_output_format():
    reference = TeacherPrompt(**load_prompt("reference")).instruction_turn(["Name three fruits."])[0]["content"]
    assert reference.index("<instruction> and </instruction>") < reference.index("Name three fruits.")
    assert reference.rstrip().endswith("<instruction>Name three fruits.</instruction>")
    smollm2 = TeacherPrompt(**load_prompt("smollm2")).instruction_turn(["Name three fruits."])[0]["content"]
    last_line = smollm2.rstrip().splitlines()[-1]
    assert "<instruction>" in last_line and "</instruction>" in last_line
    assert smollm2.index("Name three fruits.") < smollm2.rindex("<instruction>")


def test_the_response_turn_is_the_instruction_alone():
    prompt = TeacherPrompt(**load_prompt("reference"))
    assert prompt.response_turn("Name three fruits.") == [{"role": "user", "content": "Name three fruits."}]


def test_a_prompt_folder_of_ones_own(tmp_path):
    (tmp_path / "instruction.txt").write_text("Examples:\n{examples}\nNow yours, in tags.\n")
    (tmp_path / "response.txt").write_text("Answer briefly: {instruction}")
    prompt = TeacherPrompt(**load_prompt(str(tmp_path)))
    assert (
        prompt.instruction_turn(["A."])[0]["content"] == "Examples:\n<instruction>A.</instruction>\nNow yours, in tags."
    )
    assert prompt.response_turn("Say hi.")[0]["content"] == "Answer briefly: Say hi."
    (tmp_path / "response.txt").write_text("No slot here.")
    with pytest.raises(ValueError, match=r"response.txt: must contain the slot \{instruction\} exactly once"):
        load_prompt(str(tmp_path))
    with pytest.raises(ValueError, match=r"'synthesis.prompt' is 'nope': neither a prompt under prompts/ \(reference"):
        load_prompt("nope")


BOTH = [
    ("Idea: a fruit question.\n<instruction> Name three red fruits. </instruction>", "Name three red fruits."),
    ("<instruction>first</instruction> then <instruction>second</instruction> done", "second"),
    ("<Instruction>Mixed case tags.</INSTRUCTION>", "Mixed case tags."),
    ("<instruction>Rewrite this.\n\nThe cat sat.</instruction>", "Rewrite this.\n\nThe cat sat."),
    ("<instruction><instruction>Doubled opening tag.</instruction>", "Doubled opening tag."),
    ("No tags at all.", None),
    ("Only a closing tag.</instruction>", None),
    ("<instruction>  \n </instruction>", None),
    ("<instruction>", None),
    ("", None),
]
# A final opening tag that is never closed: lenient reads it, strict (the reference) keeps the last closed pair.
UNCLOSED = [
    ("Idea: x.\n<instruction>Unclosed at the end.\n", "Unclosed at the end.", None),
    ("<instruction>old</instruction>\n<instruction>Newer, unclosed", "Newer, unclosed", "old"),
    (
        "<instruction>Fix a bike.\nIt has a flat tyre.\n\nThis task is about bikes.",
        "Fix a bike.\nIt has a flat tyre.",
        None,
    ),
    ("<instruction>Fix a bike.</\n\nSure! Here is how.", "Fix a bike.", None),
    ("<instruction>\n\n Fix a bike.", "Fix a bike.", None),
    ("<instruction>Kept.</instruction> then <instruction>", None, "Kept."),
]


@pytest.mark.parametrize(("raw", "expected"), BOTH)
@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_parse_instruction(raw, expected, mode):
    assert parse_instruction(raw, mode) == expected


@pytest.mark.parametrize(("raw", "lenient", "strict"), UNCLOSED)
def test_only_lenient_parsing_reads_an_unclosed_final_tag(raw, lenient, strict):
    assert parse_instruction(raw, "lenient") == lenient
    assert parse_instruction(raw, "strict") == strict


def test_parse_mode_is_checked():
    with pytest.raises(ValueError, match="'synthesis.parse' is 'loose'"):
        parse_instruction("<instruction>x</instruction>", "loose")


def test_in_context_examples_are_seeds_until_enough_generations_exist():
    rng = np.random.default_rng(0)
    for generated in ([], GENERATED[:1]):
        chosen = choose_in_context(SEEDS, generated, rng, k=8, k_generated=2)
        assert len(chosen) == 8 and len(set(chosen)) == 8 and set(chosen) <= set(SEEDS)


def test_in_context_examples_mix_seeds_and_generations_in_shuffled_order():
    rng = np.random.default_rng(0)
    positions = set()
    for _ in range(20):
        chosen = choose_in_context(SEEDS, GENERATED[:2], rng, k=8, k_generated=2)
        assert len(chosen) == 8 and len(set(chosen)) == 8
        assert sorted(c for c in chosen if c in GENERATED) == GENERATED[:2]
        assert sum(c in SEEDS for c in chosen) == 6
        positions.add(tuple(i for i, c in enumerate(chosen) if c in GENERATED))
    assert len(positions) > 5


def test_in_context_examples_draw_from_all_generations():
    rng = np.random.default_rng(0)
    drawn = {c for _ in range(30) for c in choose_in_context(SEEDS, GENERATED, rng, k=8, k_generated=2)}
    assert set(GENERATED) <= drawn


def test_in_context_choice_is_reproducible_and_k_generated_zero_means_seeds_only():
    first = choose_in_context(SEEDS, GENERATED, np.random.default_rng(7), k=4, k_generated=0)
    assert first == choose_in_context(SEEDS, GENERATED, np.random.default_rng(7), k=4, k_generated=0)
    assert set(first) <= set(SEEDS)


@pytest.mark.parametrize(
    "seeds, k, k_generated, match",
    [
        (SEEDS[:5], 8, 2, "seed pool has 5 seeds"),
        (SEEDS, 2, 3, "between 0 and synthesis.in_context"),
        (SEEDS, 8, -1, "between 0 and synthesis.in_context"),
    ],
)
def test_in_context_errors_name_the_config_keys(seeds, k, k_generated, match):
    with pytest.raises(ValueError, match=match):
        choose_in_context(seeds, GENERATED, np.random.default_rng(0), k=k, k_generated=k_generated)


def test_parse_modes_benchmark_counts_what_each_mode_accepts(tmp_path):
    raw = ["<instruction>Closed.</instruction>", "<instruction>Never closed\n\nrambling", "no tag at all"]
    path = tmp_path / "candidates.parquet"
    pd.DataFrame({"raw_output": raw}).to_parquet(path)
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/parse_modes.py"), str(path)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    total = out.splitlines()[-1].split()
    # outputs, strict (rate), lenient (rate), lenient only
    assert total[0] == "total" and total[1] == "3" and total[2] == "1" and total[4] == "2" and total[6] == "1"
