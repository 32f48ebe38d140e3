"""The teacher's two turns — writing a new instruction from in-context examples, and answering an instruction —
and parsing the instruction out of the teacher's answer.

The turns' texts are data: a folder under prompts/ (or any folder given by `synthesis.prompt`) with
`instruction.txt` ({examples} slot) and `response.txt` ({instruction} slot); prompts/README.md describes the
built-in ones. `load_prompt` reads them when Snakemake builds the DAG, so the text is part of the synthesis
params and editing it reruns synthesis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # building the DAG reads prompts through this module; numpy is only a type here
    import numpy as np

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
EXAMPLES_SLOT = "{examples}"
INSTRUCTION_SLOT = "{instruction}"
PARSE_MODES = ("strict", "lenient")

_OPEN = re.compile(r"<instruction>", re.IGNORECASE)
_CLOSE = re.compile(r"</instruction>", re.IGNORECASE)
_UNCLOSED_END = re.compile(r"\n\s*\n|</")


@dataclass(frozen=True)
class TeacherPrompt:
    """The texts of the two turns, each with its one slot."""

    instruction: str
    response: str

    def instruction_turn(self, examples: list[str]) -> list[dict[str, str]]:
        """One user message showing `examples` as tagged instructions."""
        shown = "\n".join(f"<instruction>{example.strip()}</instruction>" for example in examples)
        return [{"role": "user", "content": self.instruction.replace(EXAMPLES_SLOT, shown)}]

    def response_turn(self, instruction: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.response.replace(INSTRUCTION_SLOT, instruction)}]


def _folder(spec: str) -> Path:
    return PROMPTS_DIR / spec if (PROMPTS_DIR / spec).is_dir() else Path(spec)


def load_text(spec: str, name: str, slots: tuple[str, ...], key: str) -> str:
    """The text of file `name` of prompt folder `spec` (a folder under prompts/, or a path; the config key `key`
    names it), which must contain each of `slots` exactly once."""
    path = _folder(spec) / name
    if not path.is_file():
        raise ValueError(f"config key {key!r}: {path} does not exist (a prompt folder holds {name})")
    text = path.read_text(encoding="utf-8").removesuffix("\n")
    for slot in slots:
        if text.count(slot) != 1:
            raise ValueError(f"{path}: must contain the slot {slot} exactly once (found {text.count(slot)})")
    return text


def load_prompt(spec: str) -> dict[str, str]:
    """The texts of prompt `spec` (a folder name under prompts/, or a folder path) as {instruction, response}."""
    if not _folder(spec).is_dir():
        known = ", ".join(sorted(p.name for p in PROMPTS_DIR.iterdir() if (p / "instruction.txt").is_file()))
        raise ValueError(
            f"config key 'synthesis.prompt' is {spec!r}: neither a prompt under prompts/ ({known}) nor a folder"
        )
    return {
        "instruction": load_text(spec, "instruction.txt", (EXAMPLES_SLOT,), "synthesis.prompt"),
        "response": load_text(spec, "response.txt", (INSTRUCTION_SLOT,), "synthesis.prompt"),
    }


def parse_instruction(raw: str, mode: str = "strict") -> str | None:
    """The instruction in the teacher's answer, stripped; None when there is none or it is empty.

    strict (the reference implementation): the text of the last closed <instruction>…</instruction> pair (tags
    in any case). lenient: the same, but a final opening tag that is never closed counts too, up to the first
    blank line or broken closing tag ("</"): small teachers often stop after the instruction without closing the
    tag, or ramble on after it. Inside a closed pair a blank line is kept, since an input may follow its
    instruction that way.
    """
    if mode not in PARSE_MODES:
        raise ValueError(f"config key 'synthesis.parse' is {mode!r}; allowed values: {', '.join(PARSE_MODES)}")
    opens = [m.end() for m in _OPEN.finditer(raw)]
    if not opens:
        return None
    closes = [m.start() for m in _CLOSE.finditer(raw)]
    if mode == "strict" or (closes and closes[-1] >= opens[-1]):
        if not closes or closes[-1] < opens[0]:
            return None
        start = max(end for end in opens if end <= closes[-1])
        text = raw[start : closes[-1]]
    else:
        text = _UNCLOSED_END.split(raw[opens[-1] :].lstrip(), maxsplit=1)[0]
    return text.strip() or None


def choose_in_context(
    seeds: list[str], generated: list[str], rng: np.random.Generator, k: int = 8, k_generated: int = 2
) -> list[str]:
    """The paper's in-context examples: k seeds until k_generated instructions exist, then k - k_generated seeds
    and k_generated earlier generations; each group drawn without replacement, the result shuffled."""
    if not 0 <= k_generated <= k:
        raise ValueError(
            f"synthesis.in_context_generated ({k_generated}) must be between 0 and synthesis.in_context ({k})"
        )
    n_generated = k_generated if len(generated) >= k_generated else 0
    n_seeds = k - n_generated
    if len(seeds) < n_seeds:
        raise ValueError(
            f"the seed pool has {len(seeds)} seeds, fewer than the {n_seeds} in-context seeds each prompt needs "
            "(synthesis.in_context): add seed files or lower synthesis.in_context"
        )
    chosen = [seeds[i] for i in rng.choice(len(seeds), size=n_seeds, replace=False)]
    chosen += [generated[i] for i in rng.choice(len(generated), size=n_generated, replace=False)]
    return [chosen[i] for i in rng.permutation(k)]
