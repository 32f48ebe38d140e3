"""A judge's one-token answer as a distribution over the allowed answers (a digit of a score, "correct" or
"incorrect"): the probability the judge gives each allowed answer as the first token of its reply.

Baselines that use the teacher as their judge (montessori.self_reward, montessori.llm2llm) ask for a single digit
or word and read this distribution instead of parsing free text. A local judge is scored exactly: one forward
pass over the rendered conversation gives the next-token distribution over the whole vocabulary, so even a small
teacher that never answers in the asked-for form (SmolLM2-135M does not) ranks the allowed answers, and the
result is deterministic and continuous (few ties). A remote judge (kind openai) is asked for one token and its
top_logprobs alternatives, of which the allowed answers are read; a capable judge puts its mass on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from montessori.judges.base import Judgment, Messages
from montessori.judges.config import JudgeConfig
from montessori.judges.judge import model_fingerprint, open_judge

# The most alternatives OpenAI's API reports per token.
TOP_LOGPROBS = 20


def _spellings(answer: str) -> set[str]:
    """How a reply may start with `answer`: as written or capitalised, with or without a leading space."""
    return {form for word in (answer, answer.capitalize()) for form in (word, " " + word)}


def _check(answers: Sequence[str]) -> None:
    firsts = [a[:1].lower() for a in answers]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"answers {list(answers)} must differ in their first letter")


def _normalised(mass: dict[str, float]) -> dict[str, float]:
    total = sum(mass.values())
    return {answer: p / total for answer, p in mass.items()} if total > 0 else {}


def reported_probabilities(judgment: Judgment, answers: Sequence[str]) -> dict[str, float]:
    """Probability per allowed answer among the first token's reported alternatives, normalised over the answers
    present; empty when none is. A token counts for an answer when it is a non-empty prefix of it, compared
    without case and surrounding space (a tokenizer may split "incorrect" into "inc" + "orrect"); answers must
    differ in their first letter, so no token counts for two."""
    _check(answers)
    if not judgment.top_logprobs:
        return {}
    mass = dict.fromkeys(answers, 0.0)
    for token, logprob in judgment.top_logprobs[0]:
        text = token.strip().lower()
        for answer in answers:
            if text and answer.lower().startswith(text):
                mass[answer] += math.exp(logprob)
    return _normalised(mass)


class LocalScorer:
    """A local judge model (transformers, in-process) scoring the first token of its reply exactly."""

    def __init__(self, model_dir: str | Path, chat_template: str, batch_size: int, dtype: str):
        from montessori.generate import HFGenerator

        model_dir = Path(model_dir).resolve()
        self.generator = HFGenerator(str(model_dir), batch_size, dtype, chat_template, role="judge")
        self.identity = (
            f"local-hf:{model_dir.name}#{model_fingerprint(model_dir)}#chat-{self.generator.chat_format.digest}"
        )

    def _first_token_ids(self, answer: str) -> set[int]:
        """The first tokens of the answer's spellings that carry part of it: a bare space token (" 3" may be a space,
        then "3") would count for every answer."""
        tokenizer = self.generator.tokenizer
        ids = set()
        for form in _spellings(answer):
            first = tokenizer(form, add_special_tokens=False)["input_ids"][0]
            text = tokenizer.decode([first]).strip().lower()
            if text and answer.lower().startswith(text):
                ids.add(first)
        return ids

    def probabilities(
        self, conversations: Sequence[Messages], answers: Sequence[str]
    ) -> tuple[list[dict[str, float]], list[str]]:
        """Per conversation, the normalised probabilities of the allowed answers as the reply's first token, and
        the token greedy decoding would have written."""
        import torch
        from tqdm import tqdm

        _check(answers)
        ids = {answer: sorted(self._first_token_ids(answer)) for answer in answers}
        generator = self.generator
        prompts = [generator.encode(c) for c in conversations]
        results: dict[int, tuple[dict[str, float], str]] = {}
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        batches = [order[i : i + generator.batch_size] for i in range(0, len(order), generator.batch_size)]
        for batch in tqdm(batches, desc="first-token scores", unit="batch"):
            # Left padding: the last position of every row is its next token's.
            inputs = generator.tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, return_tensors="pt")
            inputs = inputs.to(generator.device)
            # Positions count real tokens only, as if each conversation were alone.
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = generator.model(**inputs, position_ids=positions).logits[:, -1, :].float()
            probabilities = torch.softmax(logits, dim=-1)
            for row, index in enumerate(batch):
                mass = {answer: float(probabilities[row, ids[answer]].sum()) for answer in answers}
                top = generator.tokenizer.decode([int(logits[row].argmax())])
                results[index] = (_normalised(mass), top)
        return [results[i][0] for i in range(len(prompts))], [results[i][1] for i in range(len(prompts))]

    def close(self) -> None:
        self.generator.close()


def first_token_probabilities(
    config: JudgeConfig,
    conversations: Sequence[Messages],
    answers: Sequence[str],
    cache_path: str | Path,
    writer: str,
    tensor_parallel_size: int = 1,
) -> tuple[list[dict[str, float]], list[str], str]:
    """Per conversation the allowed answers' probabilities as the judge's first token, and the judge's first token;
    plus the judge's identity. A local judge is scored exactly in-process; a remote one through its cached Judge."""
    if config.kind == "local":
        scorer = LocalScorer(config.model, config.chat_template, config.batch_size, config.dtype)
        try:
            probabilities, texts = scorer.probabilities(conversations, answers)
        finally:
            scorer.close()
        return probabilities, texts, scorer.identity
    with open_judge(config, cache_path, writer=writer, tensor_parallel_size=tensor_parallel_size) as judge:
        judgments = judge.judge_many(conversations, max_tokens=1, top_logprobs=TOP_LOGPROBS, desc=writer)
        return [reported_probabilities(j, answers) for j in judgments], [j.text for j in judgments], judge.identity
