"""Bounded retries with exponential backoff for failures that may go away when a request is repeated."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from montessori.judges.base import JudgeUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransientError(Exception):
    """A failure that may go away when the request is repeated."""


def call_with_retries(
    call: Callable[[], T],
    endpoint: str,
    max_retries: int,
    backoff_seconds: float,
    role: str = "judge",
    config_key: str = "judge",
) -> T:
    """`call()`, repeated after backoff_seconds * 2**k while it fails transiently, at most max_retries times;
    `role` names the endpoint in the log and the error (a judge, a teacher), `config_key` its config section."""
    last: TransientError | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
        try:
            return call()
        except TransientError as e:
            last = e
            log.warning("%s %s: attempt %d of %d failed: %s", role, endpoint, attempt + 1, max_retries + 1, e)
    raise JudgeUnavailable(
        f"{role} {endpoint} failed {max_retries + 1} attempts ({config_key}.max_retries={max_retries}); "
        f"last error: {last}"
    )
