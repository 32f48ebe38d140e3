"""Chat formats: how a conversation becomes the text a role's model (teacher, student, judge) reads and writes.

`models.chat_template.ROLE` is one of
- `auto`: the tokenizer's own template (instruct models ship one; base models do not, and then we fail early);
- a built-in name (BUILTIN_FORMATS): `llama3`, `chatml`, or `plain`, an Alpaca-style text format that works with
  any tokenizer and ends each answer with the tokenizer's EOS;
- a path to a `.jinja` file.

The format is put on the tokenizer (`tokenizer.chat_template`), so every consumer — warm-up, influence and SFT
through montessori.student.encode_example, TRL's DPO, generation with transformers or vLLM — renders the same
text. Each format has an end-of-turn token, the first special token the template writes after an assistant's
content: the answer span that carries the loss ends with it, and generation stops at it. A model trained here
keeps its format: the saved tokenizer carries the template and FORMAT_FILE records which one it was, so
generating from or evaluating that model renders what it learned.

Rules pass a role's spec as a param and a .jinja file as an input (rules/common.smk), so changing either reruns
exactly the jobs that render that role's conversations.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUTO = "auto"
TEMPLATE_DIR = Path(__file__).resolve().parent / "chat_templates"
BUILTIN_FORMATS = ("llama3", "chatml", "plain")
ROLES = ("teacher", "student", "judge")
# Written beside a model trained here; the tokenizer files beside it carry the template itself.
FORMAT_FILE = "chat_format.json"
# A text no template changes, to find where an assistant's content ends in a rendered conversation.
_SENTINEL = "MONTESSORI-END-OF-ANSWER-5f1c"


class ChatFormatError(ValueError):
    """A chat format that cannot be used with a model's tokenizer; the message names the config key."""


@dataclass(frozen=True)
class ChatFormat:
    """A resolved format: `spec` as configured (auto, a built-in name or a path), its jinja `template`, and the
    token that closes an assistant turn."""

    spec: str
    template: str
    end_of_turn: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:16]


def config_key(role: str) -> str:
    return f"models.chat_template.{role}"


def template_text(spec: str, role: str) -> str | None:
    """The jinja text of a built-in name or a .jinja path; None for `auto` (the tokenizer's own template)."""
    if spec == AUTO:
        return None
    if spec in BUILTIN_FORMATS:
        return (TEMPLATE_DIR / f"{spec}.jinja").read_text(encoding="utf-8")
    path = Path(spec)
    if path.suffix != ".jinja" or not path.is_file():
        raise ChatFormatError(
            f"config key {config_key(role)!r} is {spec!r}: expected auto, one of {', '.join(BUILTIN_FORMATS)}, "
            "or the path of an existing .jinja file"
        )
    return path.read_text(encoding="utf-8")


def has_template(model_dir: str | Path) -> bool | None:
    """Whether a local model folder's tokenizer ships a chat template; None when `model_dir` is no local folder
    (a hub id, or a model not built yet). Reads the files only, so the DAG can ask it."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        return None
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        return bool(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template"))
    return False


def auto_without_template(role: str, spec: str, model_dir: str | Path, has: bool | None = None) -> str | None:
    """The error of an `auto` format for a model known to have no chat template (`has`, else read from disk)."""
    has = has_template(model_dir) if has is None else has
    if spec != AUTO or has is not False:
        return None
    return (
        f"config key {config_key(role)!r} is 'auto', but {model_dir} has no chat template (a base model); set it "
        f"to one of {', '.join(BUILTIN_FORMATS)} or a .jinja file"
    )


def _special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def detect_end_of_turn(tokenizer, template: str, spec: str, role: str) -> str:
    """The first special token the template writes after an assistant's content (<|eot_id|>, <|im_end|>, the
    EOS of `plain`); a format without one could never stop generating, so it is an error."""
    exchange = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(exchange, chat_template=template, tokenize=False)
    except Exception as e:  # jinja and template errors come in many types; all mean the same to the user
        raise ChatFormatError(f"config key {config_key(role)!r} ({spec}): the template fails to render: {e}") from e
    if _SENTINEL not in text:
        raise ChatFormatError(
            f"config key {config_key(role)!r} ({spec}): the template drops the assistant's content; "
            "it cannot train or generate answers"
        )
    suffix = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
    special = _special_ids(tokenizer)
    for token_id in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    raise ChatFormatError(
        f"config key {config_key(role)!r} ({spec}): after an assistant's answer the template writes "
        f"{suffix[:40]!r}, which holds no special token of {tokenizer.name_or_path}'s tokenizer, so generation "
        "could not stop at the end of a turn (e.g. llama3's <|eot_id|> or chatml's <|im_end|> are not in this "
        f"vocabulary); use 'plain', which ends each answer with the tokenizer's EOS ({tokenizer.eos_token!r})"
    )


def saved_format(model_dir: str | Path) -> dict[str, str] | None:
    path = Path(model_dir) / FORMAT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def resolve(tokenizer, spec: str, role: str, model_dir: str | Path | None = None) -> ChatFormat:
    """The format of `role` for this tokenizer: a model trained here keeps its own (an explicit, different spec is
    an error, since generating from it in another format would not be what it learned); otherwise `spec`."""
    saved = saved_format(model_dir) if model_dir is not None else None
    wanted = template_text(spec, role)
    if saved is not None:
        template = tokenizer.chat_template
        if wanted is not None and template != wanted:
            raise ChatFormatError(
                f"{model_dir} was trained with chat format {saved['spec']!r}, but config key {config_key(role)!r} "
                f"is {spec!r}; rerun the job that trains it (Snakemake does when the config changes) or set the "
                "key back"
            )
        return ChatFormat(saved["spec"], template, saved["end_of_turn"])
    if wanted is None:
        wanted = tokenizer.chat_template
        if not wanted:
            raise ChatFormatError(
                f"config key {config_key(role)!r} is 'auto', but {tokenizer.name_or_path} has no chat template "
                f"(a base model); set it to one of {', '.join(BUILTIN_FORMATS)} or a .jinja file"
            )
    return ChatFormat(spec, wanted, detect_end_of_turn(tokenizer, wanted, spec, role))


def apply(tokenizer, fmt: ChatFormat) -> int:
    """Put the format on the tokenizer; return the id of its end-of-turn token."""
    tokenizer.chat_template = fmt.template
    return tokenizer.convert_tokens_to_ids(fmt.end_of_turn)


def load_tokenizer(model_dir: str | Path, spec: str, role: str, **kwargs: Any):
    """The model's tokenizer with the role's chat format applied, and that format."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, **kwargs)
    fmt = resolve(tokenizer, spec, role, model_dir)
    apply(tokenizer, fmt)
    return tokenizer, fmt


# Detection renders and tokenizes a conversation; encode_example asks once per example.
_END_OF_TURN_IDS: dict[tuple, int] = {}


def end_of_turn_id(tokenizer) -> int:
    """The end-of-turn id of the format on `tokenizer` (set by `apply`, or the tokenizer's own template)."""
    template = tokenizer.chat_template
    if not template:
        raise ChatFormatError(f"{tokenizer.name_or_path}: the tokenizer has no chat template; apply a chat format")
    key = (tokenizer.name_or_path, len(tokenizer), template)
    if key not in _END_OF_TURN_IDS:
        token = detect_end_of_turn(tokenizer, template, "the tokenizer's template", "student")
        _END_OF_TURN_IDS[key] = tokenizer.convert_tokens_to_ids(token)
    return _END_OF_TURN_IDS[key]


def save(tokenizer, fmt: ChatFormat, out_dir: str | Path) -> None:
    """Save the tokenizer (it carries the template) and FORMAT_FILE into a model folder."""
    tokenizer.chat_template = fmt.template
    tokenizer.save_pretrained(out_dir)
    record = {"spec": fmt.spec, "end_of_turn": fmt.end_of_turn, "template_sha256": fmt.digest}
    (Path(out_dir) / FORMAT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
