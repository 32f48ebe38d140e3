"""What every judge backend shares: the message and judgment types, the errors, and the backend protocol."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Messages = list[dict[str, str]]
# Per generated token, the most likely alternatives as (token text, logprob), most likely first.
TopLogprobs = list[list[tuple[str, float]]]


class JudgeError(RuntimeError):
    """A judge request that cannot succeed as configured (wrong model name or key, prompt too long, ...)."""


class JudgeUnavailable(JudgeError):
    """The judge stayed unreachable or broken through every retry."""


@dataclass(frozen=True)
class Judgment:
    text: str
    top_logprobs: TopLogprobs | None = None
    cached: bool = False


@dataclass(frozen=True)
class Params:
    max_tokens: int
    temperature: float
    top_logprobs: int


def check_messages(conversations: Sequence[Messages]) -> None:
    for index, messages in enumerate(conversations):
        if not messages:
            raise ValueError(f"conversation {index} has no messages")
        for position, message in enumerate(messages):
            if not (
                isinstance(message, Mapping)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise ValueError(f"conversation {index}, message {position}: needs string 'role' and 'content'")


class Backend(Protocol):
    endpoint: str

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        """Judgments as they finish, each with the index of its conversation."""
        ...

    def close(self) -> None: ...
