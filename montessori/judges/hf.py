"""A local judge loaded in-process with transformers."""

from __future__ import annotations

from collections.abc import Iterator

from montessori.judges.base import Judgment, Messages, Params


class HFBackend:
    """Greedy (or sampled) transformers `generate` in-process, longest prompts first, `batch_size` at a time."""

    def __init__(self, model_path: str, batch_size: int, dtype: str, chat_template: str = "auto"):
        from montessori.generate import HFGenerator

        self.endpoint = f"transformers in-process ({model_path})"
        self.generator: HFGenerator | None = HFGenerator(
            model_path, batch_size=batch_size, dtype=dtype, chat_template=chat_template, role="judge"
        )

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        generator = self.generator
        prompts = [generator.encode(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        for start in range(0, len(order), generator.batch_size):
            batch = order[start : start + generator.batch_size]
            yield from zip(batch, self._generate([prompts[i] for i in batch], params))

    def _generate(self, prompts: list[list[int]], params: Params) -> list[Judgment]:
        import torch
        from transformers import GenerationConfig

        generator = self.generator
        tokenizer = generator.tokenizer
        inputs = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(generator.device)
        width = inputs["input_ids"].shape[1]
        sampling = params.temperature > 0
        # top_k=0 switches off transformers' default top-k, which OpenAI-style endpoints do not have.
        options = {"temperature": params.temperature, "top_p": 1.0, "top_k": 0} if sampling else {}
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            eos_token_id=generator.eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=params.top_logprobs > 0,
            **options,
        )
        with torch.inference_mode():
            output = generator.model.generate(**inputs, generation_config=config)
        judgments = []
        for row, ids in enumerate(output.sequences[:, width:].tolist()):
            # Up to and including the first EOS; what follows is padding.
            length = next((k + 1 for k, token in enumerate(ids) if token in generator.eos_ids), len(ids))
            top = None
            if params.top_logprobs:
                # Raw logits, as OpenAI-style endpoints report logprobs before temperature.
                top = []
                for step in range(length):
                    logprobs = torch.log_softmax(output.logits[step][row].float(), dim=-1)
                    values, indices = logprobs.topk(params.top_logprobs)
                    top.append([(tokenizer.decode([i]), v) for v, i in zip(values.tolist(), indices.tolist())])
            text = tokenizer.decode(ids[:length], skip_special_tokens=True)
            judgments.append(Judgment(text=text, top_logprobs=top))
        return judgments

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
            self.generator = None
