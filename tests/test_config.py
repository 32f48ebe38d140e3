import copy

import pytest
import yaml

from montessori.config import ConfigError, load_schema, validate_config
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


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper.yaml", "configs/test.yaml"])
def test_shipped_configs_are_valid(path):
    with open(ROOT / path) as f:
        validate_config(yaml.safe_load(f))


def test_every_schema_property_is_documented_or_obvious():
    # Every section of the schema carries a default, so a partial config.yaml always validates.
    schema = load_schema()
    for name, prop in schema["properties"].items():
        assert "default" in prop, name
    assert validate_config(copy.deepcopy({})) == validate_config({})
