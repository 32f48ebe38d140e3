"""Teacher synthesis: instructions from in-context seeds, the paper's filters, then the teacher's responses.

Prompts are built in rounds of `batch_size`, because the in-context rule depends on what was accepted so far:
all examples come from the seed pool until enough instructions exist, then some come from earlier generations.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from montessori.filters import RougeFilter, instruction_verdict
from montessori.generate import Generator, Sampling
from montessori.prompts import choose_in_context, instruction_prompt, parse_instruction, response_prompt

log = logging.getLogger(__name__)

OK = "ok"
COLUMNS = [
    "candidate_id", "prompt_id", "stage", "iteration", "teacher", "seed_ids", "n_generated_in_context",
    "prompt", "raw_output", "instruction", "response", "prompt_tokens", "output_tokens", "response_tokens",
    "verdict", "rouge_l",
]  # fmt: skip


@dataclass(frozen=True)
class SynthesisPlan:
    """How much one synthesis job writes. Exactly one of n_prompts / n_examples is set."""

    stage: str  # random stream and id prefix: warmup, iter1, final (shared by methods: same seeds)
    iteration: int  # which teacher writes: 0 = untrained
    candidates_per_prompt: int
    n_prompts: int | None = None  # fixed number of teacher prompts (Montessori iterations)
    n_examples: int | None = None  # keep prompting until this many instructions pass the filters
    max_prompts_factor: int = 4  # give up after n_examples * factor prompts (a teacher that never follows)

    def __post_init__(self) -> None:
        if (self.n_prompts is None) == (self.n_examples is None):
            raise ValueError("set exactly one of n_prompts and n_examples")


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stage.encode())])


def prompts_still_needed(n_examples: int, accepted: int, prompted: int, prior_rate: float = 0.5) -> int:
    """How many more prompts should yield the missing instructions at the rate of accepted instructions per
    prompt seen so far (`prior_rate` before the first round). Rounds sized this way keep a small set from
    overshooting by a whole batch; a large set still goes in full batches."""
    # Before any acceptance the rate is taken as one in `prompted`, not zero.
    rate = max(accepted, 1) / prompted if prompted else prior_rate
    return max(1, math.ceil((n_examples - accepted) / rate))


def write_instructions(
    generator: Generator,
    seeds: pd.DataFrame,
    plan: SynthesisPlan,
    sampling: Sampling,
    filters: dict,
    in_context: int,
    in_context_generated: int,
    batch_size: int,
    seed: int,
) -> pd.DataFrame:
    """Sample instructions from the teacher and give each a filter verdict (no responses yet)."""
    rng = stage_rng(seed, plan.stage)
    seed_texts = seeds["seed_text"].tolist()
    seed_ids = seeds["seed_id"].tolist()
    text_to_id = dict(zip(seed_texts, seed_ids))
    rouge = RougeFilter(filters["max_rouge_l"])
    generated: list[str] = []
    rows: list[dict] = []
    n_prompts = 0
    max_prompts = plan.n_prompts or plan.n_examples * plan.max_prompts_factor

    def done() -> bool:
        if plan.n_prompts is not None:
            return n_prompts >= plan.n_prompts
        return len(generated) >= plan.n_examples or n_prompts >= max_prompts

    while not done():
        round_size = min(batch_size, max_prompts - n_prompts)
        if plan.n_examples is not None:
            round_size = min(round_size, prompts_still_needed(plan.n_examples, len(generated), n_prompts))
        contexts = [
            choose_in_context(seed_texts, generated, rng, k=in_context, k_generated=in_context_generated)
            for _ in range(round_size)
        ]
        conversations = [instruction_prompt(examples) for examples in contexts]
        outputs = generator.generate(
            conversations,
            Sampling(**sampling, n=plan.candidates_per_prompt, seed=seed + n_prompts),
            desc=f"{plan.stage} instructions",
        )
        for examples, conversation, samples in zip(contexts, conversations, outputs):
            prompt_id = f"{plan.stage}-p{n_prompts:05d}"
            n_prompts += 1
            for j, sample in enumerate(samples):
                instruction = parse_instruction(sample.text)
                verdict = instruction_verdict(
                    instruction, filters["min_chars"], filters["max_chars"], filters["banned_words"]
                )
                rouge_l = float("nan")
                if verdict == OK:
                    novel, rouge_l = rouge.accept(instruction)
                    if novel:
                        generated.append(instruction)
                    else:
                        verdict = "similar_to_accepted"
                rows.append(
                    {
                        "candidate_id": f"{prompt_id}-c{j}",
                        "prompt_id": prompt_id,
                        "seed_ids": [text_to_id[t] for t in examples if t in text_to_id],
                        "n_generated_in_context": sum(t not in text_to_id for t in examples),
                        "prompt": conversation[-1]["content"],
                        "raw_output": sample.text,
                        "instruction": instruction,
                        "prompt_tokens": sample.prompt_tokens,
                        "output_tokens": sample.completion_tokens,
                        "verdict": verdict,
                        "rouge_l": rouge_l,
                    }
                )
        log.info("%s: %d prompts, %d instructions accepted", plan.stage, n_prompts, len(generated))
    if plan.n_examples is not None and len(generated) < plan.n_examples:
        log.warning(
            "%s: only %d of %d instructions passed the filters after %d prompts",
            plan.stage, len(generated), plan.n_examples, n_prompts,
        )  # fmt: skip
    return pd.DataFrame(rows)


def write_responses(
    generator: Generator, candidates: pd.DataFrame, sampling: Sampling, max_example_tokens: int
) -> pd.DataFrame:
    """The teacher answers every accepted instruction; empty or over-long examples get a verdict, not a crash."""
    candidates = candidates.copy()
    candidates["response"] = None
    candidates["response_tokens"] = 0
    ok = candidates.index[candidates["verdict"] == OK]
    if len(ok):
        outputs = generator.generate(
            [response_prompt(i) for i in candidates.loc[ok, "instruction"]], sampling, desc="responses"
        )
        for index, (sample,) in zip(ok, outputs):
            response = sample.text.strip()
            candidates.at[index, "response"] = response
            candidates.at[index, "response_tokens"] = sample.completion_tokens
            if not response:
                candidates.at[index, "verdict"] = "empty_response"
            elif sample.prompt_tokens + sample.completion_tokens > max_example_tokens:
                candidates.at[index, "verdict"] = "too_long"
    return candidates


def synthesize(
    generator: Generator, seeds: pd.DataFrame, plan: SynthesisPlan, synthesis: dict, batch_size: int, seed: int
) -> pd.DataFrame:
    """candidates.parquet: every sampled instruction with its lineage, raw teacher output and verdict."""
    candidates = write_instructions(
        generator,
        seeds,
        plan,
        synthesis["instruction"],
        synthesis["filters"],
        synthesis["in_context"],
        synthesis["in_context_generated"],
        batch_size,
        seed,
    )
    candidates = write_responses(
        generator, candidates, Sampling(**synthesis["response"], seed=seed), synthesis["max_example_tokens"]
    )
    candidates["stage"] = plan.stage
    candidates["iteration"] = plan.iteration
    candidates["teacher"] = generator.model_path
    for column in ("prompt_tokens", "output_tokens", "response_tokens"):
        candidates[column] = candidates[column].astype("int64")
    log.info("verdicts: %s", candidates["verdict"].value_counts().to_dict())
    return candidates[COLUMNS]


def training_set(candidates: pd.DataFrame, n_examples: int) -> pd.DataFrame:
    """The first n accepted candidates: instruction/response pairs with their lineage."""
    accepted = candidates[candidates["verdict"] == OK].head(n_examples)
    return accepted[
        ["candidate_id", "prompt_id", "stage", "iteration", "teacher", "seed_ids", "instruction", "response"]
    ]
