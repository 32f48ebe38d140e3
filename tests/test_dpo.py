import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from montessori.dpo import preference_dataset, train_teacher
from montessori.launch import run_stage
from montessori.schedule import optimizer_steps

NO_LORA = {"enabled": False, "r": 4, "alpha": 8, "dropout": 0.0}
# Full learning rate from the first step: with a warmup the first step would run at lr * min_lr_ratio.
FLAT = {"warmup": 0.0, "stable": 1.0, "decay": 0.0, "min_lr_ratio": 1.0e-3}


def fake_pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "prompt": [f"Write one new instruction, number {i}." for i in range(n)],
            "chosen": [f"A useful task.\n<instruction>Explain tide number {i}.</instruction>" for i in range(n)],
            "rejected": [f"Hmm.\n<instruction>Draw a map {i}.</instruction>" for i in range(n)],
        }
    )


def weights(path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert before.keys() == after.keys()
    return [name for name in before if not torch.equal(before[name], after[name])]


def test_preference_dataset_is_conversational():
    row = preference_dataset(fake_pairs(1))[0]
    assert row["prompt"] == [{"role": "user", "content": "Write one new instruction, number 0."}]
    assert row["chosen"] == [
        {"role": "assistant", "content": "A useful task.\n<instruction>Explain tide number 0.</instruction>"}
    ]
    assert row["rejected"][0]["role"] == "assistant"


def train(tiny_model_dir, out_dir, pairs, **overrides):
    options = dict(
        beta=0.1,
        lr=1.0e-3,
        batch_size=2,
        gradient_accumulation=1,
        epochs=1,
        max_length=64,
        schedule=FLAT,
        lora=NO_LORA,
        seed=0,
    )
    options.update(overrides)
    return train_teacher(tiny_model_dir, pairs, out_dir, **options)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_full_dpo_step_changes_the_teacher(tiny_model_dir, tmp_path, precision):
    out_dir = tmp_path / "teacher1"
    summary = train(tiny_model_dir, out_dir, fake_pairs(2), precision=precision)
    assert summary["bf16"] is (precision == "bf16")
    assert summary["steps"] == 1
    assert summary["schedule"] == {"warmup": 0, "stable": 1, "decay": 0}
    assert summary["pairs_trained"] == 2
    assert summary["final_loss"] is not None and summary["reward_accuracy"] is not None
    assert len(summary["history"]) == 1
    assert not summary["lora"]
    after = weights(out_dir)
    assert changed(weights(tiny_model_dir), after)
    # The teacher's files, plus the chat format it learned in (a build_model folder also has Snakemake's stamp).
    source = {p.name for p in tiny_model_dir.iterdir()} - {".snakemake_timestamp"}
    assert {p.name for p in out_dir.iterdir()} == source | {"chat_format.json"}
    assert config(out_dir) == config(tiny_model_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher1"]


def test_lora_dpo_yields_a_merged_plain_model(tiny_model_dir, tmp_path):
    out_dir = tmp_path / "teacher1"
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
    summary = train(tiny_model_dir, out_dir, fake_pairs(2), lora=lora)
    assert summary["lora"] and summary["steps"] == 1
    names = {p.name for p in out_dir.iterdir()}
    assert "adapter_config.json" not in names and "model.safetensors" in names
    before, after = weights(tiny_model_dir), weights(out_dir)
    assert not any("lora" in name for name in after)
    assert config(out_dir) == config(tiny_model_dir)
    # Only the adapted linear layers move; embeddings and norms are frozen under LoRA.
    moved = changed(before, after)
    assert moved and all("proj" in name for name in moved)


def test_schedule_follows_the_real_step_count(tiny_model_dir, tmp_path):
    schedule = {"warmup": 0.25, "stable": 0.25, "decay": 0.5, "min_lr_ratio": 0.1}
    summary = train(tiny_model_dir, tmp_path / "t", fake_pairs(4), batch_size=1, schedule=schedule)
    assert summary["steps"] == 4
    assert summary["schedule"] == {"warmup": 1, "stable": 1, "decay": 2}
    # The rate each step ran at: warmup starts at lr * min_lr_ratio, the decay is a half cosine towards it.
    rates = [entry["learning_rate"] for entry in summary["history"]]
    assert rates == pytest.approx([1.0e-4, 1.0e-3, 1.0e-3, 5.5e-4])


def test_schedule_is_sized_from_the_pairs_that_fit_max_length(tiny_model_dir, tmp_path, caplog):
    pairs = fake_pairs(3)
    pairs.loc[1, "prompt"] = "Write one new instruction. " * 20
    with caplog.at_level("WARNING", logger="montessori.dpo"):
        summary = train(tiny_model_dir, tmp_path / "t", pairs, batch_size=1)
    assert (summary["pairs"], summary["pairs_trained"], summary["steps"]) == (3, 2, 2)
    assert "1 of 3 pairs dropped" in caplog.text


def test_max_length_below_every_prompt_fails_and_writes_nothing(tiny_model_dir, tmp_path):
    out_dir = tmp_path / "t"
    with pytest.raises(ValueError, match="dpo.max_length"):
        train(tiny_model_dir, out_dir, fake_pairs(2), max_length=16)
    assert not out_dir.exists()


def test_two_process_dpo_keeps_the_effective_batch_and_saves_a_plain_teacher(tiny_model_dir, tmp_path):
    """DDP over gloo: the effective batch of 1 pair x 2 accumulation steps becomes 1 pair on each of 2 ranks. 5 pairs
    are 5 micro-batches, 3 per rank (accelerate's even_batches repeats the first pair on rank 1), so 3 optimizer
    steps, as in one process (5 micro-batches accumulated by 2); the schedule is sized from those 3."""
    pairs_file = tmp_path / "pairs.parquet"
    fake_pairs(5).to_parquet(pairs_file)
    schedule = {"warmup": 0.0, "stable": 0.34, "decay": 0.66, "min_lr_ratio": 0.1}
    arguments = dict(
        teacher_path=str(tiny_model_dir), pairs=str(pairs_file), out_dir=str(tmp_path / "teacher1"), beta=0.1,
        lr=1.0e-3, batch_size=1, gradient_accumulation=2, epochs=1, max_length=64, schedule=schedule, lora=NO_LORA,
        seed=0, precision="fp32",
    )  # fmt: skip
    summary = run_stage("dpo", arguments, processes=2, threads=2)
    assert summary["processes"] == 2 and summary["gradient_accumulation"] == 1 and summary["gradient_checkpointing"]
    assert summary["steps"] == optimizer_steps(5, 1, 1, 1, processes=2) == optimizer_steps(5, 1, 2, 1) == 3
    assert summary["schedule"] == {"warmup": 0, "stable": 1, "decay": 2}
    assert [entry["step"] for entry in summary["history"]] == [1, 2, 3]
    out_dir = tmp_path / "teacher1"
    source = {p.name for p in tiny_model_dir.iterdir()} - {".snakemake_timestamp"}
    assert {p.name for p in out_dir.iterdir()} == source | {"chat_format.json"}
    assert config(out_dir) == config(tiny_model_dir)
    assert changed(weights(tiny_model_dir), weights(out_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.parquet", "teacher1"]


def test_an_effective_batch_the_processes_cannot_share_fails_before_training(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"dpo.batch_size x dpo.gradient_accumulation = 2\) does not split over 2"):
        train(tiny_model_dir, tmp_path / "t", fake_pairs(2))
    assert not (tmp_path / "t").exists()
