"""`montessori plan`: parameter counts against real transformers models, the memory arithmetic, the CLI."""

import copy

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from montessori.cli import main
from montessori.model_sizes import ModelConfigError, model_config, model_shape, shape_from_config
from montessori.plan import (
    CUDA_CONTEXT,
    GB,
    load_config,
    model_shapes,
    totals,
)
from montessori.plan_report import parse_memory
from montessori.plan_stages import build_stages
from tests.conftest import ROOT

SMALL_CONFIGS = {
    "gqa, untied": {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False},
    "mha, tied": {"num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": True},
    "head_dim not hidden/heads": {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 24},
    "biases": {"num_attention_heads": 4, "num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True},
}
PAPER_MODELS = {
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,  # the published figure
    "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
    "TinyLlama/TinyLlama_v1.1": 1_100_048_384,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
}


@pytest.mark.parametrize("extra", SMALL_CONFIGS.values(), ids=SMALL_CONFIGS.keys())
def test_parameter_count_equals_a_real_models(extra):
    config = LlamaConfig(vocab_size=301, hidden_size=64, intermediate_size=96, num_hidden_layers=3, **extra)
    model = LlamaForCausalLM(config)
    shape = shape_from_config(config.to_dict(), "small", "test")
    assert shape.parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "count"), PAPER_MODELS.items())
def test_vendored_configs_count_as_transformers_builds_them(name, count):
    config, source = model_config(name)
    assert source == f"data/model_configs/{name}/config.json"
    with torch.device("meta"):
        model = LlamaForCausalLM(AutoConfig.for_model(**config))
    assert model_shape(name).parameters == sum(p.numel() for p in model.parameters()) == count


def test_vendored_configs_have_the_published_shapes():
    llama = model_shape("meta-llama/Meta-Llama-3-8B")
    assert (llama.hidden_size, llama.intermediate_size, llama.num_layers) == (4096, 14336, 32)
    assert (llama.num_heads, llama.num_kv_heads, llama.vocab_size, llama.tie_word_embeddings) == (32, 8, 128256, False)
    tiny = model_shape("TinyLlama/TinyLlama_v1.1")
    assert (tiny.hidden_size, tiny.intermediate_size, tiny.num_layers) == (2048, 5632, 22)
    assert (tiny.num_heads, tiny.num_kv_heads, tiny.vocab_size) == (32, 4, 32000)
    # K and V of 32 layers x 8 heads x 128 in bf16: 128 KiB per token.
    assert llama.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131072


def test_builtin_models_resolve_without_weights(tiny_model_dir):
    smol = model_shape("smollm2-135m-instruct")
    assert smol.parameters == 134_515_008 and smol.tie_word_embeddings
    tiny = model_shape("tiny-random-llama")
    built = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    assert tiny.parameters == sum(p.numel() for p in built.parameters())
    # A local folder reads its own config.json.
    assert model_shape(str(tiny_model_dir)).parameters == tiny.parameters


def test_a_model_without_config_json_fails_naming_the_key_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelConfigError) as error:
        model_shape("some-org/not-vendored-7b", "models.student")
    message = str(error.value)
    assert "models.student" in message and "'some-org/not-vendored-7b'" in message
    assert "HF_HUB_OFFLINE is set" in message and "data/model_configs/some-org/not-vendored-7b/config.json" in message
    assert "huggingface-cli download some-org/not-vendored-7b config.json" in message
    with pytest.raises(ModelConfigError, match="models.teacher: .* is a folder without config.json"):
        model_shape(str(tmp_path), "models.teacher")


def _paper(**overrides) -> dict:
    config = load_config(ROOT / "configs" / "paper.yaml")
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def _stage(stages, name):
    return next(s for s in stages if s.name == name)


def test_influence_shard_row_by_hand():
    """The exact influence shard of the 8B student, computed here from the formula the README states."""
    config = _paper()
    stage = _stage(build_stages(config, model_shapes(config)), "influence shard, exact")
    n = 8_030_261_248
    assert stage.state_bytes == 28 * n
    per_token = 32 * (6 * 4096 + 4 * 4096 + 2 * 1024 + 4 * 14336) * 4 + 2 * 128256 * 4
    assert stage.work_bytes == 2048 * per_token  # one 2048-token float32 candidate beats 16 references' logits
    assert stage.per_gpu_bytes(1) == 28 * n + 2048 * per_token + CUDA_CONTEXT
    fsdp_units = 3 * 4 * 128256 * 4096  # the embedding is the largest unit
    assert stage.per_gpu_bytes(7) == pytest.approx(28 * n / 7 + 2048 * per_token + CUDA_CONTEXT + fsdp_units)
    assert stage.gpus(80 * GB) == 7 and stage.per_gpu_bytes(6) > 0.9 * 80 * GB


def test_modes_parallelism_and_lora():
    config = _paper()
    config["influence"].update(mode="first_order", candidate_batch_size=4)  # keys of another change
    stages = build_stages(config, model_shapes(config))
    first_order = _stage(stages, "influence shard, first_order")
    assert first_order.selected and not _stage(stages, "influence shard, exact").selected
    assert first_order.bytes_per_param == 4 + 8 + 8 + 4 * 4
    # vLLM tensor parallelism divides 32 heads / 8 KV heads; FSDP takes any count.
    assert _stage(stages, "synthesis (vLLM)").candidate_gpus() == [1, 2, 4, 8]
    assert _stage(stages, "DPO").candidate_gpus()[:3] == [1, 2, 3]
    tiny = copy.deepcopy(config)
    tiny["models"]["teacher"] = "TinyLlama/TinyLlama_v1.1"  # 4 KV heads: no 8-way tensor parallelism
    assert _stage(build_stages(tiny, model_shapes(tiny)), "synthesis (vLLM)").candidate_gpus() == [1, 2, 4]
    config["dpo"]["lora"]["enabled"] = True
    lora = _stage(build_stages(config, model_shapes(config)), "DPO")
    per_layer = (4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096)
    assert lora.state_bytes == 4 * 8_030_261_248 + 16 * 32 * 16 * per_layer
    assert lora.gpus(80 * GB) == 1


def test_totals_pairs_and_judge_calls():
    config = _paper()
    for c, pairs in ((1, 0), (2, 1), (3, 2), (4, 4), (5, 6)):
        config["synthesis"]["candidates_per_prompt"] = c
        assert totals(config)["pairs_per_prompt"] == pairs  # floor(c/2) * ceil(c/2)
    t = totals(_paper())
    assert (t["candidates_per_iteration"], t["candidates"], t["pairs"]) == (4000, 8000, 8000)
    # The Self-Instruct student is AlpacaEval's reference: its own outputs tie, unjudged.
    # 9 students (Table 1's methods, it1 and it2 of the iterated ones, and the untouched one).
    assert (t["alpaca_eval_calls"], t["mt_bench_calls"]) == (805 * 8, 80 * 2 * 9)
    limited = _paper()
    limited["eval"]["limit"].update(alpaca_eval=10, mt_bench=5)
    limited["eval"]["alpaca_eval"]["reference"] = "gpt4_1106_preview"
    t = totals(limited)
    assert (t["alpaca_eval_calls"], t["mt_bench_calls"]) == (10 * 9, 5 * 2 * 9)


@pytest.mark.parametrize("name", ["paper.yaml", "paper_1b.yaml"])
def test_a_paper_config_takes_no_laptop_size_from_config_yaml(name):
    """`snakemake --configfile` replaces config.yaml (Snakefile): what a paper config leaves out is the paper's."""
    config = load_config(ROOT / "configs" / name)
    assert all(limit is None for limit in config["eval"]["limit"].values())
    assert config["synthesis"]["instruction"]["max_tokens"] == 1024


def test_paper_1b_is_the_paper_with_a_tinyllama_student():
    paper, small = load_config(ROOT / "configs/paper.yaml"), load_config(ROOT / "configs/paper_1b.yaml")
    assert (small["models"]["teacher"], small["models"]["student"]) == (
        "meta-llama/Meta-Llama-3-8B-Instruct", "TinyLlama/TinyLlama_v1.1"
    )  # fmt: skip
    assert (small["models"]["chat_template"]["student"], paper["models"]["chat_template"]["student"]) == (
        "plain", "llama3"
    )  # fmt: skip
    assert small["sft"]["lr"] == 1.0e-5 and paper["sft"]["lr"] == 5.0e-6
    for section in ("synthesis", "warmup", "influence", "dpo", "final", "data"):
        assert small[section] == paper[section], section


def test_parse_memory():
    assert parse_memory("80GB") == 80e9 and parse_memory("141") == 141e9 and parse_memory("80GiB") == 80 * 2**30
    with pytest.raises(ValueError, match="--gpu-memory"):
        parse_memory("eighty")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("config.yaml", ["smollm2-135m-instruct: 134,515,008 parameters", "local judge (hf)", "total 18"]),
        ("configs/paper.yaml", ["meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters", "total 7,880"]),
        ("configs/paper_1b.yaml", ["TinyLlama/TinyLlama_v1.1: 1,100,048,384 parameters", "KV cache 22 KiB"]),
    ],
)
def test_cli_plans_each_config(config, expected, capsys):
    assert main(["plan", str(ROOT / config)]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())  # wrapped lines joined
    for text in (*expected, "influence shard, exact", "DPO pairs at most", "assumptions"):
        assert text in words
    rows = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith(("warm-up ", "SFT "))}
    assert set(rows) == {"warm-up", "SFT"} and all("FSDP" in row for row in rows.values())


def test_cli_plan_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {student: nobody/nothing-1b}\n")
    assert main(["plan", str(bad)]) == 1
    assert "models.student: cannot read the config.json of model 'nobody/nothing-1b'" in capsys.readouterr().err
    bad.write_text("bogus: 1\n")
    assert main(["plan", str(bad)]) == 1
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    assert main(["plan", str(ROOT / "config.yaml"), "--gpu-memory", "lots"]) == 1
