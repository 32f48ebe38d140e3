"""Teacher synthesis: instructions from in-context seeds, the paper's filters, then the teacher's responses.

Synthesis runs in rounds of up to `batch_size` prompts, because the in-context rule depends on what was accepted
so far: all examples come from the seed pool until enough instructions exist, then some come from earlier
generations. Each round writes instructions, filters them, and answers the accepted ones, so a job asked for
`n_examples` keeps prompting until that many candidates are usable end to end (an answer can still come out
empty, too long, or cut off at max_tokens), and a Montessori iteration asked for `n_prompts` keeps prompting
until that many prompts are *pairable*: two or more usable candidates, the least a preference pair needs. A
small teacher fails the format or copies an in-context example often enough that a fixed prompt count would
leave most prompts with one usable candidate and the iteration with no pairs.

A run is deterministic given the seed: each round draws from one random stream and asks the teacher with
seeds derived from the number of prompts so far, so a round can be replayed from its saved rows
(`SynthesisState.replay`) without asking the teacher again.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from montessori.filters import RougeFilter, instruction_verdict
from montessori.generate import Generator, Sampling
from montessori.prompts import TeacherPrompt, choose_in_context, parse_instruction

log = logging.getLogger(__name__)

OK = "ok"
COLUMNS = [
    "candidate_id", "prompt_id", "stage", "iteration", "teacher", "seed_ids", "n_generated_in_context",
    "prompt", "raw_output", "output_finish_reason", "instruction", "response", "response_finish_reason",
    "prompt_tokens", "output_tokens", "response_tokens", "verdict", "rouge_l", "rouge_l_match", "rouge_l_source",
]  # fmt: skip
TRAINING_COLUMNS = ["candidate_id", "prompt_id", "stage", "iteration", "teacher", "seed_ids", "instruction", "response"]


class ShortSetError(ValueError):
    """A synthesis job asked for n examples got fewer usable ones within its prompt budget."""


@dataclass(frozen=True)
class SynthesisPlan:
    """How much one synthesis job writes. Exactly one of n_prompts / n_examples is set."""

    stage: str  # random stream and id prefix: warmup, iter1, final (shared by methods: same seeds)
    iteration: int  # which teacher writes: 0 = untrained
    candidates_per_prompt: int
    n_prompts: int | None = None  # keep prompting until this many prompts are pairable (Montessori iterations)
    n_examples: int | None = None  # keep prompting until this many candidates are usable end to end
    max_prompts_factor: int = 4  # give up after target * factor prompts (a teacher that never follows)

    def __post_init__(self) -> None:
        if (self.n_prompts is None) == (self.n_examples is None):
            raise ValueError("set exactly one of n_prompts and n_examples")
        if self.n_prompts is not None and self.candidates_per_prompt < 2:
            raise ValueError(
                f"candidates_per_prompt is {self.candidates_per_prompt}; a Montessori iteration needs at least 2 "
                "candidates per prompt to form preference pairs (synthesis.candidates_per_prompt)"
            )

    @property
    def target(self) -> int:
        return self.n_prompts if self.n_prompts is not None else self.n_examples

    @property
    def max_prompts(self) -> int:
        return self.target * self.max_prompts_factor


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stage.encode())])


def prompts_still_needed(n_examples: int, accepted: int, prompted: int, prior_rate: float = 0.5) -> int:
    """How many more prompts should yield the missing examples at the rate of usable examples per prompt seen
    so far (`prior_rate` before the first round). Rounds sized this way keep a small set from overshooting by a
    whole batch; a large set still goes in full batches."""
    # Before any acceptance the rate is taken as one in `prompted`, not zero.
    rate = max(accepted, 1) / prompted if prompted else prior_rate
    return max(1, math.ceil((n_examples - accepted) / rate))


@dataclass
class SynthesisState:
    """Everything a round depends on: the random stream, the instructions accepted so far (in-context examples
    and the novelty filter's memory), the prompts asked, and the rows written."""

    rng: np.random.Generator
    rouge: RougeFilter
    generated: list[str] = field(default_factory=list)
    n_prompts: int = 0
    rows: list[dict] = field(default_factory=list)

    @property
    def n_usable(self) -> int:
        return sum(row["verdict"] == OK for row in self.rows)

    @property
    def n_pairable(self) -> int:
        usable = Counter(row["prompt_id"] for row in self.rows if row["verdict"] == OK)
        return sum(count >= 2 for count in usable.values())

    def accept(self, row: dict, examples: list[str]) -> None:
        """The novelty verdict of a row that passed the other filters; an accepted instruction joins the pool."""
        novelty = self.rouge.accept(row["instruction"], examples)
        row.update(rouge_l=novelty.score, rouge_l_match=novelty.match, rouge_l_source=novelty.source)
        if novelty.novel:
            self.generated.append(row["instruction"])
        else:
            row["verdict"] = f"similar_to_{novelty.source}"


@dataclass
class Synthesis:
    """One synthesis job's fixed inputs: teacher, seeds, plan, config section (`synthesis`), prompt texts."""

    generator: Generator
    seeds: pd.DataFrame
    plan: SynthesisPlan
    synthesis: dict
    prompt: TeacherPrompt
    batch_size: int
    seed: int
    _seed_ids: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self._seed_ids = dict(zip(self.seeds["seed_text"], self.seeds["seed_id"]))

    def new_state(self) -> SynthesisState:
        return SynthesisState(
            stage_rng(self.seed, self.plan.stage), RougeFilter(self.synthesis["filters"]["max_rouge_l"])
        )

    def reached(self, state: SynthesisState) -> int:
        """Progress towards plan.target: usable candidates (n_examples) or pairable prompts (n_prompts)."""
        return state.n_usable if self.plan.n_examples is not None else state.n_pairable

    def done(self, state: SynthesisState) -> bool:
        return state.n_prompts >= self.plan.max_prompts or self.reached(state) >= self.plan.target

    def round_size(self, state: SynthesisState) -> int:
        size = min(self.batch_size, self.plan.max_prompts - state.n_prompts)
        return min(size, prompts_still_needed(self.plan.target, self.reached(state), state.n_prompts))

    def contexts(self, state: SynthesisState, size: int) -> list[list[str]]:
        cfg = self.synthesis
        seed_texts = self.seeds["seed_text"].tolist()
        return [
            choose_in_context(seed_texts, state.generated, state.rng, cfg["in_context"], cfg["in_context_generated"])
            for _ in range(size)
        ]

    def run_round(self, state: SynthesisState) -> list[dict]:
        """Ask the teacher for one round's instructions and answers; returns (and records) the round's rows."""
        return self.ask(state, self.contexts(state, self.round_size(state)))

    def ask(self, state: SynthesisState, contexts: list[list[str]]) -> list[dict]:
        """One prompt per list of in-context examples: the teacher's instructions, filtered, and its answers to the
        accepted ones; returns (and records) the rows."""
        conversations = [self.prompt.instruction_turn(examples) for examples in contexts]
        sampling = Sampling(
            **self.synthesis["instruction"], n=self.plan.candidates_per_prompt, seed=self.seed + state.n_prompts
        )
        outputs = self.generator.generate(conversations, sampling, desc=f"{self.plan.stage} instructions")
        rows = self._judge_instructions(state, contexts, conversations, outputs)
        self._answer(rows)
        state.rows.extend(rows)
        return rows

    def replay(self, state: SynthesisState, rows: list[dict]) -> None:
        """Bring `state` to where it was after the round that wrote `rows` (saved by an earlier, interrupted run),
        drawing the same random numbers, without asking the teacher."""
        size = len({row["prompt_id"] for row in rows})
        contexts = self.contexts(state, size)
        by_prompt: dict[str, list[dict]] = {}
        for row in rows:
            by_prompt.setdefault(row["prompt_id"], []).append(row)
        for examples, prompt_rows in zip(contexts, by_prompt.values()):
            for row in prompt_rows:
                # The rows the novelty filter saw are those it scored; seeing them again rebuilds its memory.
                if not math.isnan(row["rouge_l"]) and state.rouge.accept(row["instruction"], examples).novel:
                    state.generated.append(row["instruction"])
        state.n_prompts += size
        state.rows.extend(rows)

    def _judge_instructions(self, state, contexts, conversations, outputs) -> list[dict]:
        filters, parse = self.synthesis["filters"], self.synthesis["parse"]
        rows = []
        for examples, conversation, samples in zip(contexts, conversations, outputs):
            prompt_id = f"{self.plan.stage}-p{state.n_prompts:05d}"
            state.n_prompts += 1
            for j, sample in enumerate(samples):
                instruction = parse_instruction(sample.text, parse)
                verdict = instruction_verdict(
                    instruction, filters["min_chars"], filters["max_chars"], filters["banned_words"]
                )
                row = {
                    "candidate_id": f"{prompt_id}-c{j}",
                    "prompt_id": prompt_id,
                    "seed_ids": [self._seed_ids[t] for t in examples if t in self._seed_ids],
                    "n_generated_in_context": sum(t not in self._seed_ids for t in examples),
                    "prompt": conversation[-1]["content"],
                    "raw_output": sample.text,
                    "output_finish_reason": sample.finish_reason,
                    "instruction": instruction,
                    "response": None,
                    "response_finish_reason": None,
                    "prompt_tokens": sample.prompt_tokens,
                    "output_tokens": sample.completion_tokens,
                    "response_tokens": 0,
                    "verdict": verdict,
                    "rouge_l": float("nan"),
                    "rouge_l_match": None,
                    "rouge_l_source": None,
                }
                if verdict == OK:
                    state.accept(row, examples)
                rows.append(row)
        return rows

    def _answer(self, rows: list[dict]) -> None:
        """The teacher answers every accepted instruction; empty, cut-off or over-long examples get a verdict."""
        ok = [row for row in rows if row["verdict"] == OK]
        if not ok:
            return
        sampling = Sampling(**self.synthesis["response"], seed=self.seed)
        outputs = self.generator.generate(
            [self.prompt.response_turn(row["instruction"]) for row in ok], sampling, desc="responses"
        )
        for row, (sample,) in zip(ok, outputs):
            response = sample.text.strip()
            row.update(response=response, response_tokens=sample.completion_tokens)
            row["response_finish_reason"] = sample.finish_reason
            if not response:
                row["verdict"] = "empty_response"
            elif sample.finish_reason == "length":
                row["verdict"] = "truncated"
            elif sample.prompt_tokens + sample.completion_tokens > self.synthesis["max_example_tokens"]:
                row["verdict"] = "too_long"

    def frame(self, state: SynthesisState) -> pd.DataFrame:
        candidates = pd.DataFrame(
            state.rows, columns=[c for c in COLUMNS if c not in ("stage", "iteration", "teacher")]
        )
        candidates["stage"] = self.plan.stage
        candidates["iteration"] = self.plan.iteration
        candidates["teacher"] = self.generator.model_path
        for column in ("prompt_tokens", "output_tokens", "response_tokens"):
            candidates[column] = candidates[column].astype("int64")
        candidates["rouge_l"] = candidates["rouge_l"].astype("float64")
        return candidates[COLUMNS]


def synthesize(
    generator: Generator,
    seeds: pd.DataFrame,
    plan: SynthesisPlan,
    synthesis: dict,
    prompt: TeacherPrompt,
    batch_size: int,
    seed: int,
    after_round: Callable[[list[dict]], None] | None = None,
    done_rounds: list[list[dict]] = (),
) -> pd.DataFrame:
    """candidates.parquet: every sampled instruction with its lineage, raw teacher output and verdict.

    `done_rounds` are the rows of rounds an interrupted run finished (replayed, not asked again); `after_round`
    sees each new round's rows as soon as the round ends (to checkpoint them).
    """
    job = Synthesis(generator, seeds, plan, synthesis, prompt, batch_size, seed)
    state = job.new_state()
    for rows in done_rounds:
        job.replay(state, rows)
    while not job.done(state):
        rows = job.run_round(state)
        if after_round is not None:
            after_round(rows)
        pairable_note = f", {state.n_pairable} pairable prompts" if plan.n_prompts is not None else ""
        log.info("%s: %d prompts, %d usable candidates%s", plan.stage, state.n_prompts, state.n_usable, pairable_note)
    candidates = job.frame(state)
    log.info("verdicts: %s", candidates["verdict"].value_counts().to_dict())
    if job.reached(state) < plan.target:
        what = "usable candidates" if plan.n_examples is not None else "pairable prompts"
        log.warning(
            "%s: only %d of %d %s after %d prompts (the budget: synthesis.max_prompts_factor)",
            plan.stage, job.reached(state), plan.target, what, state.n_prompts,
        )  # fmt: skip
    return candidates


def training_set(candidates: pd.DataFrame, n_examples: int, where: str, exact: bool = True) -> pd.DataFrame:
    """The first n usable candidates: instruction/response pairs with their lineage.

    `exact`: a set with fewer than n usable candidates is an error (methods are compared on sets of one size),
    naming what was reached and what to change; otherwise a warning.
    """
    usable = candidates[candidates["verdict"] == OK]
    if len(usable) < n_examples:
        verdicts = candidates["verdict"].value_counts().to_dict()
        message = (
            f"{where}: {len(usable)} of the {n_examples} examples asked for after "
            f"{candidates['prompt_id'].nunique()} prompts (verdicts: {verdicts}); raise "
            "synthesis.max_prompts_factor (prompts allowed per example), loosen what rejects most of them "
            "(synthesis.parse: lenient, synthesis.filters, synthesis.response.max_tokens), or lower the size"
        )
        if exact:
            raise ShortSetError(message)
        log.warning(message)
    return usable.head(n_examples)[TRAINING_COLUMNS]
