"""The teacher's two turns: writing a new instruction from in-context examples, and answering an instruction.

The instruction turn follows the paper's structure (a fixed request, examples wrapped in <instruction> tags, an
answer of a short rationale and then the tagged instruction); the wording is ours. It is short and ends with the
output format because SmolLM2-135M-Instruct loses track of longer requests: of eleven wordings tried at the
paper's sampling (temperature 1.0, top_p 0.9), most got a tagged instruction back in fewer than one output in
ten, this one in 14 of 64.
"""

from __future__ import annotations

import re

import numpy as np

INSTRUCTION_REQUEST = """\
Below are instructions that users gave an AI assistant.

{examples}

Write a new instruction that a user could give the assistant, on a different topic. It must make sense on its \
own; if it needs an input, such as a sentence or a list, include it. Start your reply with one sentence about \
the topic. End your reply with the new instruction inside <instruction></instruction> tags."""

_OPEN = re.compile(r"<instruction>", re.IGNORECASE)
_CLOSE = re.compile(r"</instruction>", re.IGNORECASE)
_UNCLOSED_END = re.compile(r"\n\s*\n|</")


def instruction_prompt(examples: list[str]) -> list[dict[str, str]]:
    """The teacher's instruction-writing turn: one user message showing `examples` as tagged instructions."""
    shown = "\n".join(f"<instruction>{example.strip()}</instruction>" for example in examples)
    return [{"role": "user", "content": INSTRUCTION_REQUEST.format(examples=shown)}]


def parse_instruction(raw: str) -> str | None:
    """The text of the last <instruction>…</instruction> pair in `raw` (tags in any case), stripped.

    A final opening tag that is never closed counts too, up to the first blank line or broken closing tag
    ("</"): small teachers often stop after the instruction without closing the tag, or ramble on after it.
    Inside a closed pair a blank line is kept, since an input may follow its instruction that way.
    Returns None when there is no tagged text or it is empty.
    """
    opens = [m.end() for m in _OPEN.finditer(raw)]
    if not opens:
        return None
    closes = [m.start() for m in _CLOSE.finditer(raw)]
    if closes and closes[-1] >= opens[-1]:
        start = max(end for end in opens if end <= closes[-1])
        text = raw[start : closes[-1]]
    else:
        text = _UNCLOSED_END.split(raw[opens[-1] :].lstrip(), maxsplit=1)[0]
    return text.strip() or None


def response_prompt(instruction: str) -> list[dict[str, str]]:
    """The teacher's answering turn: the instruction alone as one user message."""
    return [{"role": "user", "content": instruction}]


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
