import hashlib
import importlib.metadata
import math
import re

import numpy as np
import pandas as pd
import pytest

from montessori.benchmarks.alpaca_eval import (
    ANNOTATOR_CONFIG,
    GPT4_REFERENCE_FILE,
    LC_GLM_FULL,
    LC_GLM_OFFLINE,
    load_instructions,
    load_outputs,
    read_preference,
    run_alpaca_eval,
    winrates,
)
from montessori.generate import Sampling, load_generator
from montessori.io import DataError
from montessori.judges import JudgeConfig, open_judge
from tests.test_judges import FakeEndpoint, chat_response

PARSER = {"numerator_token": "m", "denominator_tokens": ["m", "M"], "is_binarize": False, "log_prob_index": 0}
OUTPUT_RE = re.compile(r'"output": """(.*?)"""', re.DOTALL)


def choice(text: str, top: list[tuple[str, float]] | None = None) -> dict:
    completion = {"text": text}
    if top is not None:
        alternatives = [{"token": t, "logprob": lp} for t, lp in top]
        completion["logprobs"] = {"content": [{"token": top[0][0], "logprob": top[0][1], "top_logprobs": alternatives}]}
    return completion


@pytest.mark.parametrize(
    "completion, preference, source",
    [
        (choice("M", [("M", math.log(0.6)), ("m", math.log(0.2)), ("The", math.log(0.1))]), 2 - 0.25, "logprobs"),
        (choice("m", [("m", -0.01), ("The", -5.0)]), 1.0, "logprobs"),
        (choice("M", [("M", -0.01), ("The", -5.0)]), 2.0, "logprobs"),
        (choice("m", [("The", -0.5), ("A", -1.0)]), 1.0, "text"),
        (choice(" M\n"), 2.0, "text"),
        (choice("m"), 1.0, "text"),
        (choice("Output (a)"), math.nan, "unparsed"),
        (choice(""), math.nan, "unparsed"),
        (None, math.nan, "unparsed"),
    ],
)
def test_read_preference(completion, preference, source):
    value, found = read_preference(completion, **PARSER)
    assert found == source
    assert value == pytest.approx(preference, nan_ok=True)


def synthetic_annotations(n: int, seed: int = 0) -> pd.DataFrame:
    """Preferences that depend on length alone, with model outputs longer on average than the reference's."""
    rng = np.random.default_rng(seed)
    model_lengths = rng.integers(200, 600, n)
    reference_lengths = rng.integers(50, 350, n)
    preference = 1 + 1 / (1 + np.exp(-(model_lengths - reference_lengths) / 100))
    return pd.DataFrame(
        {
            "instruction": [f"instruction {i}" for i in range(n)],
            "output_1": ["r" * k for k in reference_lengths],
            "output_2": ["m" * k for k in model_lengths],
            "generator_1": "reference",
            "generator_2": "model",
            "preference": preference,
        }
    )


def test_offline_length_control_removes_a_pure_length_preference(tmp_path):
    metrics = winrates(synthetic_annotations(60), gamed_file=tmp_path / "absent.csv")
    assert metrics["lc_glm"] == LC_GLM_OFFLINE
    assert metrics["win_rate"] > 70
    assert abs(metrics["length_controlled_winrate"] - 50) < 5
    assert metrics["n_total"] == 60


def test_a_model_against_itself_ties_on_both_win_rates(tmp_path):
    annotations = synthetic_annotations(3)
    annotations["output_2"] = annotations["output_1"]
    annotations["preference"] = 1.5
    metrics = winrates(annotations, gamed_file=tmp_path / "absent.csv")
    assert metrics["win_rate"] == 50 and metrics["length_controlled_winrate"] == 50
    assert "identical" in metrics["lc_note"]


def test_length_control_needs_enough_valid_preferences(tmp_path):
    annotations = synthetic_annotations(6)
    annotations.loc[:1, "preference"] = np.nan
    metrics = winrates(annotations, gamed_file=tmp_path / "absent.csv")
    assert metrics["length_controlled_winrate"] is None and metrics["lc_glm"] is None
    assert "4 valid preferences" in metrics["lc_note"]
    assert metrics["n_total"] == 4 and not math.isnan(metrics["win_rate"])


def test_full_length_control_reads_the_gamed_file_from_disk(tmp_path):
    """AlpacaEval 2's own GLM when df_gamed.csv is on disk (a synthetic one here; the hub is never asked)."""
    n = 30
    annotations = synthetic_annotations(n)
    rng = np.random.default_rng(1)
    gamed = pd.concat(
        [
            pd.DataFrame(
                {
                    "model": name,
                    "index": range(n),
                    "preference": rng.uniform(0, 1, n),
                    "std_delta_len": rng.normal(shift, 1, n),
                    "instruction_difficulty": np.linspace(-1, 1, n),
                    "not_gamed_baseline": False,
                }
            )
            for name, shift in (("verbose", -1.0), ("concise", 1.0))
        ]
    )
    gamed_file = tmp_path / "df_gamed.csv"
    gamed.to_csv(gamed_file, index=False)
    metrics = winrates(annotations, gamed_file=gamed_file)
    assert metrics["lc_glm"] == LC_GLM_FULL
    assert 0 < metrics["length_controlled_winrate"] < metrics["win_rate"]


def outputs(instructions, generator: str, text) -> list[dict]:
    return [
        {"instruction": i["instruction"], "output": text(k), "generator": generator} for k, i in enumerate(instructions)
    ]


@pytest.fixture
def endpoint():
    server = FakeEndpoint(lambda body: (200, chat_response("M", [[("M", math.log(0.8)), ("m", math.log(0.2))]]), 0.0))
    yield server
    server.close()


def endpoint_judge(endpoint, tmp_path):
    config = JudgeConfig(kind="openai", model="fake-judge", base_url=endpoint.base_url, max_retries=0, concurrency=2)
    return open_judge(config, tmp_path / "judge_cache")


@pytest.mark.parametrize("with_logprobs", [True, False])
def test_preferences_follow_the_judge_and_the_packages_order_swap(endpoint, tmp_path, with_logprobs):
    if not with_logprobs:
        endpoint.reply = lambda body: (200, chat_response("m"), 0.0)
    instructions = load_instructions()[:8]
    model = outputs(instructions, "student", lambda k: "model answer " * (k + 1))
    reference = outputs(instructions, "teacher", lambda k: f"reference answer {k}")
    reference[3]["output"] = model[3]["output"]
    with endpoint_judge(endpoint, tmp_path) as judge:
        result = run_alpaca_eval(model, reference, judge, {"all": list(range(6))})

    assert (result["model"], result["reference"], result["judge"]) == ("student", "teacher", judge.judge_id)
    assert result["n_items"] == 6 and result["n_invalid"] == 0
    # What judged it: the package's version, the annotator by name and content, every judge setting.
    assert result["alpaca_eval_version"] == importlib.metadata.version("alpaca-eval") == "0.6.6"
    assert result["annotator"] == "montessori_weighted_alpaca_eval"
    assert result["annotator_config"] == {
        "file": "montessori/benchmarks/annotators/montessori_weighted_alpaca_eval/configs.yaml",
        "sha256": hashlib.sha256(ANNOTATOR_CONFIG.read_bytes()).hexdigest(),
    }
    assert result["annotator_prompt"]["file"] == "data/alpaca_eval/alpaca_eval_clf.txt"
    assert result["judge_settings"] == judge.settings() and result["judge_settings"]["concurrency"] == 2
    source = "logprobs" if with_logprobs else "text"
    assert result["preference_sources"] == {source: 5, "identical outputs": 1}
    # The identical pair is tied by the package without asking the judge.
    assert len(endpoint.requests) == 5
    sent = {}
    for request in endpoint.requests:
        body = request["body"]
        assert body["max_tokens"] == 1 and body["temperature"] == 0.0
        assert (body.get("top_logprobs"), body["messages"][0]["role"]) == (5, "system")
        sent[re.search(r'"instruction": """(.*?)"""', body["messages"][1]["content"], re.DOTALL).group(1)] = body

    records = result["annotations"]
    assert [r["instruction"] for r in records] == [i["instruction"] for i in instructions[:6]]
    assert {r["output_order_swapped"] for r in records if r["preference_source"] == source} == {True, False}
    for record in records:
        if record["preference_source"] == "identical outputs":
            assert record["preference"] == 1.5 and record["judge_output"] is None
            continue
        shown = OUTPUT_RE.findall(sent[record["instruction"]]["messages"][1]["content"])
        first_shown = record["model_output"] if record["output_order_swapped"] else record["reference_output"]
        assert shown[0] == first_shown
        # In the order shown: logprobs P("m") = 0.2 give 2 - 0.2; the text "m" says the first output is better.
        judged = 1.8 if with_logprobs else 1.0
        expected = 3 - judged if record["output_order_swapped"] else judged
        assert record["preference"] == pytest.approx(expected)
    preferences = [r["preference"] for r in records]
    assert result["win_rate"] == pytest.approx(100 * np.mean([p - 1 for p in preferences]))
    assert result["lc_glm"] == LC_GLM_OFFLINE and 0 < result["lc_win_rate"] < 100
    assert result["subset"] == "all" and result["item_ids"] == [f"alpaca_eval-{i:03d}" for i in range(6)]
    assert [r["item_id"] for r in records] == result["item_ids"]


def test_several_subsets_judge_each_item_once(endpoint, tmp_path):
    instructions = load_instructions()[:8]
    model = outputs(instructions, "student", lambda k: "model answer " * (k + 1))
    reference = outputs(instructions, "teacher", lambda k: f"reference answer {k}")
    selected = {"heldout": [2, 3, 4, 5, 6, 7], "all": [0, 1, 2, 3, 4, 5]}
    with endpoint_judge(endpoint, tmp_path) as judge:
        result = run_alpaca_eval(model, reference, judge, selected)
    assert len(endpoint.requests) == 8  # the union of the two subsets, each item once
    assert result["subset"] == "heldout" and result["item_ids"] == result["subsets"]["heldout"]["item_ids"]
    assert result["subsets"]["all"]["item_ids"] == [f"alpaca_eval-{i:03d}" for i in range(6)]
    by_item = {r["item_id"]: r["preference"] for r in result["annotations"]}
    for subset, indices in selected.items():
        expected = 100 * np.mean([by_item[f"alpaca_eval-{i:03d}"] - 1 for i in indices])
        assert result["subsets"][subset]["win_rate"] == pytest.approx(expected)
        assert result["subsets"][subset]["n_items"] == 6
    assert result["win_rate"] == result["subsets"]["heldout"]["win_rate"]


def test_outputs_must_cover_the_instructions_and_be_named_apart(endpoint, tmp_path):
    instructions = load_instructions()[:3]
    model = outputs(instructions, "student", str)
    broken = outputs(instructions, "teacher", str)
    broken[1]["output"] = None
    with endpoint_judge(endpoint, tmp_path) as judge:
        with pytest.raises(DataError, match="model_outputs: no output for 1 of the 3"):
            run_alpaca_eval(model[:2], outputs(instructions, "teacher", str), judge, {"all": list(range(3))})
        with pytest.raises(ValueError, match="both named 'student'"):
            run_alpaca_eval(model, outputs(instructions, "student", str), judge, {"all": list(range(3))})
        with pytest.raises(DataError, match=r"reference_outputs\[1\]: missing string field 'output'"):
            run_alpaca_eval(model, broken, judge, {"all": list(range(3))})
    assert endpoint.requests == []


def test_end_to_end_with_the_tiny_model_as_student_and_local_judge(tiny_model_dir, tmp_path):
    """Tiny model answers, the same tiny model judges against the vendored GPT-4 Turbo outputs: its preferences
    are noise or unparsable, and every item is still accounted for."""
    instructions = load_instructions()[:4]
    generator = load_generator(str(tiny_model_dir), backend="hf")
    answers = generator.generate(
        [[{"role": "user", "content": i["instruction"]}] for i in instructions], Sampling(temperature=0, max_tokens=12)
    )
    generator.close()
    model = outputs(instructions, "tiny-student", lambda k: answers[k][0].text)
    config = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="hf", batch_size=4)
    with open_judge(config, tmp_path / "judge_cache") as judge:
        result = run_alpaca_eval(model, load_outputs(GPT4_REFERENCE_FILE), judge, {"all": list(range(4))})
    assert result["reference"] == "gpt4_1106_preview" and result["judge"] == "local-hf:tiny-random-llama"
    assert result["n_items"] == 4 and sum(result["preference_sources"].values()) == 4
    unparsed = result["preference_sources"].get("unparsed", 0)
    assert result["n_invalid"] == unparsed
    assert all(isinstance(r["judge_output"], str) for r in result["annotations"])
    assert sum(r["preference"] is None for r in result["annotations"]) == unparsed
    # Four items are fewer than the length-control GLM's five folds.
    assert result["lc_win_rate"] is None and result["lc_note"]
