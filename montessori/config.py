"""Config validation: JSON schema with defaults, and errors that name the key at fault.

Snakemake's own `validate()` reports jsonschema's raw message ("Additional properties are not allowed");
we format it ourselves so a user sees the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from montessori.methods import method_errors

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match schemas/config.schema.yaml."""


def _with_defaults(validator_class: type) -> type:
    """A validator that fills each missing property with its schema default before descending into it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft7Validator)


def _resolve(schema: dict, node: dict) -> dict:
    """`node`, or the subschema its local `$ref` ("#/definitions/x", "#/properties/a/properties/b") points to."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _schema_at(schema: dict, path: list) -> dict:
    """The subschema that governs the instance at `path` (following $ref)."""
    node = schema
    for key in path:
        node = _resolve(schema, node)
        if isinstance(key, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(key, {})
    return _resolve(schema, node)


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(_schema_at(schema, list(error.absolute_path)).get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(repr(".".join([*map(str, error.absolute_path), k])) for k in unknown)
        return f"unknown config key {keys}; allowed keys at {where}: {', '.join(allowed)}"
    if error.validator == "enum":
        return (
            f"config key {where!r} is {error.instance!r}; allowed values: {', '.join(map(repr, error.validator_value))}"
        )
    return f"config key {where!r}: {error.message}"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Fill defaults into `config` (in place, and return it) or raise ConfigError listing every problem."""
    schema = load_schema(schema_path)
    errors = sorted(_DefaultingValidator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        problems = [_describe(e, schema) for e in errors]
    else:
        # Imported here: montessori.judges.config imports ConfigError from this module.
        from montessori.judges.config import judge_errors

        problems = method_errors(config) + judge_errors(config)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"invalid config ({schema_path.name}):\n{lines}")
    return config
