import copy

import pytest
import yaml

from montessori.config import ConfigError, load_schema, validate_config
from montessori.methods import method_iteration
from tests.conftest import ROOT


def test_defaults_are_filled_in_nested_objects():
    config = validate_config({})
    assert config["experiment"] == "default"
    assert config["synthesis"]["instruction"] == {
        "temperature": 1.0,
        "top_p": 0.9,
        "presence_penalty": 1.0,
        "max_tokens": 1024,
    }
    assert config["synthesis"]["response"]["temperature"] == 0.6
    assert config["dpo"]["schedule"] == {"warmup": 0.1, "stable": 0.5, "decay": 0.4, "min_lr_ratio": 1e-3}
    assert config["dpo"]["lora"]["enabled"] is False


def test_partial_section_keeps_other_defaults():
    config = validate_config({"synthesis": {"instruction": {"max_tokens": 64}}})
    assert config["synthesis"]["instruction"]["max_tokens"] == 64
    assert config["synthesis"]["instruction"]["top_p"] == 0.9


def test_defaults_are_not_shared_between_configs():
    a, b = validate_config({}), validate_config({})
    a["final"]["methods"].append("x")
    assert b["final"]["methods"] == ["self_instruct", "montessori"]


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError) as e:
        validate_config({"bogus": 1})
    assert "'bogus'" in str(e.value) and "influence" in str(e.value)


def test_unknown_nested_key_is_named_with_its_path():
    with pytest.raises(ConfigError) as e:
        validate_config({"dpo": {"betta": 0.1}})
    message = str(e.value)
    assert "'dpo.betta'" in message and "beta" in message


def test_wrong_enum_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        validate_config({"influence": {"baseline": "after"}})
    assert "influence.baseline" in str(e.value) and "'null_step'" in str(e.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="warmup.lr"):
        validate_config({"warmup": {"lr": "fast"}})


def test_every_error_is_reported():
    with pytest.raises(ConfigError) as e:
        validate_config({"seed": "x", "iterations": 0})
    assert "'seed'" in str(e.value) and "'iterations'" in str(e.value)


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper.yaml", "configs/test.yaml", "configs/slurm_test.yaml"])
def test_shipped_configs_are_valid(path):
    with open(ROOT / path) as f:
        validate_config(yaml.safe_load(f))


def test_every_schema_property_is_documented_or_obvious():
    # Every section of the schema carries a default, so a partial config.yaml always validates.
    schema = load_schema()
    for name, prop in schema["properties"].items():
        assert "default" in prop, name
    assert validate_config(copy.deepcopy({})) == validate_config({})


def test_an_earlier_teacher_is_a_method_of_its_own():
    config = validate_config({"final": {"methods": ["self_instruct", "montessori_it1", "montessori"]},
                              "eval": {"methods": ["no_finetune", "montessori_it1", "montessori"]}})  # fmt: skip
    assert config["final"]["methods"][1] == "montessori_it1"


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        (["self_instruct", "montessori_it2"], "'montessori_it2', but iteration 2 is montessori's last iteration"),
        (["self_instruct", "llm2llm_it3"], "'llm2llm_it3', but iteration 3 is never reached (iterations: 2)"),
        (["self_instruct", "montessori_x"], "'final.methods.1'"),
        (["self_instruct", "strong_teacher"], "'models.strong_teacher' is not set"),
    ],
)
def test_a_method_without_its_teacher_is_named(methods, expected):
    with pytest.raises(ConfigError) as e:
        validate_config({"iterations": 2, "final": {"methods": methods}, "eval": {"methods": ["no_finetune"]}})
    assert expected in str(e.value)


def test_an_evaluated_method_needs_its_final_set_and_alpaca_eval_its_reference():
    with pytest.raises(ConfigError) as e:
        validate_config({"final": {"methods": ["montessori"]}})
    message = str(e.value)
    assert "'eval.methods' has 'self_instruct', which has no final training set" in message
    assert "'eval.alpaca_eval.reference' is 'self_instruct'" in message
    # Against the vendored GPT-4 outputs no Self-Instruct student is needed.
    validate_config({"final": {"methods": ["montessori"]}, "eval": {"methods": ["no_finetune", "montessori"],
                     "alpaca_eval": {"reference": "gpt4_1106_preview"}}})  # fmt: skip


def test_each_method_names_its_teacher():
    methods = ("no_finetune", "self_instruct", "strong_teacher", "montessori_it2", "montessori", "self_reward_it1",
               "self_reward", "llm2llm_it2", "llm2llm")  # fmt: skip
    assert [method_iteration(m, 3) for m in methods] == [None, 0, 0, 2, 3, 1, 3, 2, 3]
    with pytest.raises(ValueError, match="unknown method 'montessori_it0'"):
        method_iteration("montessori_it0", 3)
