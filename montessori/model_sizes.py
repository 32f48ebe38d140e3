"""A model's shape from its config.json, and the counts the memory plan is built from.

Where config.json comes from, in order: a local model folder; a built-in model (tiny-random-llama's
architecture from montessori.models, SmolLM2's vendored); a copy vendored under data/model_configs/ORG/NAME/
(the paper's models, for machines that cannot reach the hub); the hub (config.json alone, by huggingface_hub),
unless HF_HUB_OFFLINE is set. Nothing here loads weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from montessori.model_names import BUILTIN_MODELS

VENDORED_CONFIGS = Path(__file__).resolve().parent.parent / "data" / "model_configs"
BUILTIN_VENDORED = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Decoder architectures whose parameters `parameter_count` knows how to count (Llama's layout).
LLAMA_LIKE = ("llama", "mistral")


class ModelConfigError(ValueError):
    """A model whose config.json cannot be found or read."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    source: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def layer_parameters(self) -> int:
        """One decoder layer: q/k/v/o projections (GQA: k and v have num_kv_heads heads), the gated MLP, two norms."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        if self.attention_bias:
            attention += q + 2 * kv + self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + self.hidden_size
        return attention + mlp + 2 * self.hidden_size

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def parameters(self) -> int:
        """Embeddings, the layers, the final norm and the lm_head (unless it shares the embedding matrix)."""
        head = 0 if self.tie_word_embeddings else self.embedding_parameters
        return self.embedding_parameters + self.num_layers * self.layer_parameters + self.hidden_size + head

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @property
    def activation_values_per_token(self) -> int:
        """Values one token keeps per layer for the backward pass, an estimate for transformers' Llama layer with
        SDPA attention and no recomputation: 6 x hidden (the two RMSNorms' inputs, outputs and statistics),
        4 x q (q, the attention output and its reshaped copy, k/v repeated to the query heads), 2 x kv (k, v) and
        4 x intermediate (the MLP's gate, up, activation and product)."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 6 * self.hidden_size + 4 * q + 2 * kv + 4 * self.intermediate_size

    @property
    def geometry(self) -> str:
        tied = "tied" if self.tie_word_embeddings else "untied"
        return (
            f"{self.num_layers} layers, hidden {self.hidden_size}, MLP {self.intermediate_size}, "
            f"{self.num_heads} heads / {self.num_kv_heads} KV heads x {self.head_dim}, vocab {self.vocab_size} ({tied})"
        )


def shape_from_config(config: dict[str, Any], name: str, source: str) -> ModelShape:
    """The shape of a Llama-family model from its config.json contents."""
    model_type = config.get("model_type")
    if model_type not in LLAMA_LIKE:
        raise ModelConfigError(
            f"{source}: model_type {model_type!r} of model {name!r}; montessori plan counts the parameters of "
            f"Llama-architecture models ({', '.join(LLAMA_LIKE)}) only"
        )
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in config]
    if missing:
        raise ModelConfigError(f"{source}: config.json of model {name!r} lacks {', '.join(missing)}")
    heads = config["num_attention_heads"]
    return ModelShape(
        name=name,
        source=source,
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        # LlamaConfig's default: an lm_head of its own.
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{path}: not valid JSON ({e})") from e


def _from_hub(name: str) -> tuple[dict[str, Any], str] | str:
    """The hub's config.json, or why it could not be had."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set, so the hub was not asked"
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=name, filename="config.json")
    except Exception as e:  # any hub failure (network, gated, missing file) ends in the same advice
        return f"the hub did not give it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return _read_json(Path(path)), f"hub {name} (config.json)"


def model_config(name: str, key: str = "model") -> tuple[dict[str, Any], str]:
    """config.json of a config model entry (`key` names the config key, for the error) and where it came from."""
    folder = Path(name)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise ModelConfigError(f"{key}: {name} is a folder without config.json; point {key} at a model folder")
        return _read_json(path), str(path)
    if name == "tiny-random-llama":
        from transformers import AutoTokenizer

        from montessori.models import TOKENIZER_DIR, tiny_llama_config

        return tiny_llama_config(AutoTokenizer.from_pretrained(TOKENIZER_DIR)).to_dict(), "montessori.models"
    vendored = VENDORED_CONFIGS / BUILTIN_VENDORED.get(name, name) / "config.json"
    if vendored.is_file():
        return _read_json(vendored), str(vendored.relative_to(VENDORED_CONFIGS.parent.parent))
    why = "it has no org/name form" if name.count("/") != 1 else _from_hub(name)
    if isinstance(why, tuple):
        return why
    raise ModelConfigError(
        f"{key}: cannot read the config.json of model {name!r}: it is not a local folder, not a built-in model "
        f"({', '.join(BUILTIN_MODELS)}), not vendored as data/model_configs/{name}/config.json, and {why}. "
        f"Fetch it where the hub is reachable (`huggingface-cli download {name} config.json`) and set {key} to "
        f"the model folder, or copy the file to data/model_configs/{name}/config.json"
    )


def model_shape(name: str, key: str = "model") -> ModelShape:
    config, source = model_config(name, key)
    return shape_from_config(config, name, source)
