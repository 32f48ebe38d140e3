"""Chat completions from any OpenAI-compatible endpoint, with bounded retries and requests in parallel.

OpenAIBackend needs no Judge: `chat(messages, params)` is one retried request, `complete(conversations, params)`
yields many as they finish. A Judge adds the cache and the judge's identity on top.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from montessori.judges.base import JudgeError, Judgment, Messages, Params
from montessori.judges.retries import TransientError, call_with_retries

# HTTP statuses worth retrying besides 5xx: request timeout, conflict, rate limit (as the OpenAI SDK does).
TRANSIENT_STATUSES = (408, 409, 429)


def parse_chat_completion(response: Any) -> Judgment:
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if choices else None
    if message is None:
        raise TransientError(f"invalid response (no choices[0].message): {str(response)[:200]!r}")
    top = None
    logprobs = getattr(choices[0], "logprobs", None)
    if logprobs is not None and logprobs.content:
        top = [[(alt.token, float(alt.logprob)) for alt in item.top_logprobs] for item in logprobs.content]
    return Judgment(text=message.content or "", top_logprobs=top)


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible endpoint, `concurrency` requests in flight. `extra_body` holds
    request fields outside OpenAI's API that the endpoint understands (vLLM's `stop_token_ids`, for one). `role`
    names the endpoint in errors and logs (a judge; the strong teacher of montessori.api_teacher), and
    `config_key` the config section that sets its timeouts and retries."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        api_key_env: str,
        timeout_seconds: float,
        max_retries: int,
        backoff_seconds: float,
        concurrency: int,
        use_proxy_env: bool = True,
        extra_body: Mapping[str, Any] | None = None,
        role: str = "judge",
        config_key: str = "judge",
    ):
        import openai

        self.role = role
        self.config_key = config_key
        self.model = model
        self.endpoint = f"{base_url} (model {model})"
        self.api_key_env = api_key_env
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        # The SDK's own retries are off: ours are bounded, logged and end in JudgeUnavailable. An endpoint without
        # authentication (a local vLLM) still needs some key string for the SDK.
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout_seconds,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(trust_env=use_proxy_env),
        )

    def create(self, messages: Messages, **options: Any) -> Any:
        """One chat completion request with these OpenAI API fields, its failures sorted into TransientError
        (worth repeating) and JudgeError (not); no retries here."""
        import openai

        if self.extra_body:
            options["extra_body"] = self.extra_body
        try:
            return self.client.chat.completions.create(model=self.model, messages=messages, **options)
        except openai.APIStatusError as e:
            if e.status_code in TRANSIENT_STATUSES or e.status_code >= 500:
                raise TransientError(f"HTTP {e.status_code}: {e.message}") from e
            hint = f" (is ${self.api_key_env} set to a valid key?)" if e.status_code in (401, 403) else ""
            raise JudgeError(
                f"{self.role} {self.endpoint} refused the request: HTTP {e.status_code}: {e.message}{hint}"
            ) from e
        except openai.APITimeoutError as e:
            raise TransientError(
                f"no answer within {self.timeout_seconds} s ({self.config_key}.timeout_seconds)"
            ) from e
        except openai.APIConnectionError as e:
            raise TransientError(f"connection failed: {e}") from e
        except (openai.APIResponseValidationError, ValueError) as e:
            raise TransientError(f"invalid response: {e}") from e

    def _request(self, messages: Messages, params: Params) -> Judgment:
        options: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": params.temperature}
        if params.top_logprobs:
            options.update(logprobs=True, top_logprobs=params.top_logprobs)
        return parse_chat_completion(self.create(messages, **options))

    def chat(self, messages: Messages, params: Params) -> Judgment:
        """One chat completion, retried while it fails transiently; JudgeUnavailable when it never succeeds."""
        return call_with_retries(
            lambda: self._request(messages, params),
            self.endpoint,
            self.max_retries,
            self.backoff_seconds,
            self.role,
            self.config_key,
        )

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = {pool.submit(self.chat, m, params): i for i, m in enumerate(conversations)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # On failure, queued requests are dropped rather than each retried against a judge known to be down.
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.client.close()
