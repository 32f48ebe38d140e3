import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from montessori.chat_format import ChatFormatError, saved_format
from montessori.launch import run_stage
from montessori.sft import tokenized_dataset, train_student
from montessori.student import IGNORE_INDEX, encode_example
from tests.conftest import TOY_EXAMPLES

FLAT = {"warmup": 0.0, "stable": 1.0, "decay": 0.0, "min_lr_ratio": 1.0e-3}


def weights(path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def train(tiny_model_dir, out_dir, train_set, **overrides):
    options = dict(lr=1.0e-3, epochs=1, batch_size=4, micro_batch_size=2, max_length=64, schedule=FLAT, seed=0)
    options.update(overrides)
    return train_student(tiny_model_dir, train_set, out_dir, **options)


def test_sft_examples_are_the_warm_up_encoding(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = tokenized_dataset(TOY_EXAMPLES.head(1), tokenizer, 64)[0]
    assert row == encode_example(tokenizer, "Name a primary colour.", "Red.", 64)
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "Red.<|im_end|>"


def test_a_base_student_trains_in_an_explicit_format_and_keeps_it(tiny_base_model_dir, tmp_path):
    with pytest.raises(ChatFormatError, match="'models.chat_template.student' is 'auto'.*no chat template"):
        train(tiny_base_model_dir, tmp_path / "auto", TOY_EXAMPLES)
    assert not (tmp_path / "auto").exists()
    train(tiny_base_model_dir, tmp_path / "plain", TOY_EXAMPLES, chat_template="plain")
    assert saved_format(tmp_path / "plain")["spec"] == "plain"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain")
    assert tokenizer.chat_template.startswith("{#- Alpaca-style plain text")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sft_takes_accumulated_steps_and_saves_a_float32_student(tiny_model_dir, tmp_path, precision):
    out_dir = tmp_path / "student"
    summary = train(tiny_model_dir, out_dir, TOY_EXAMPLES, precision=precision)
    # 8 examples, effective batch 4 (2 micro-batches of 2): 2 optimizer steps.
    assert summary["steps"] == 2 and summary["examples"] == 8
    assert summary["bf16"] is (precision == "bf16")
    before, after = weights(tiny_model_dir), weights(out_dir)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    saved = AutoModelForCausalLM.from_pretrained(out_dir)
    assert saved.dtype == torch.float32 and saved.config.use_cache
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_bad_batch_and_empty_set_fail_before_training(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"sft.batch_size = 3\) does not split over 1 process.*micro_batch_size = 2"):
        train(tiny_model_dir, tmp_path / "s", TOY_EXAMPLES, batch_size=3, micro_batch_size=2)
    with pytest.raises(ValueError, match="empty training set"):
        train(tiny_model_dir, tmp_path / "s", pd.DataFrame(columns=["instruction", "response"]))
    assert not (tmp_path / "s").exists()


def test_two_processes_train_what_one_process_trains(tiny_model_dir, tmp_path):
    """DDP over gloo, 2 ranks x micro-batch 2 vs one process accumulating 2 micro-batches: the same global batches,
    and the loss of each normalised by the answer tokens of the whole global batch, so the same gradients, with
    gradient checkpointing on in the 2-process run (sft.gradient_checkpointing auto) and off in the 1-process one.
    Measured: max abs weight difference 0.0 in one run, 3.8e-6 in a CI run (float32 sums in another order: the
    ranks run one thread each), against weight changes of ~1e-3 (lr 1e-3, 2 AdamW steps, whose normalised update
    magnifies rounding in near-zero gradients); the test allows 1% of the largest change."""
    train_file = tmp_path / "train.parquet"
    TOY_EXAMPLES.to_parquet(train_file)
    one = train(tiny_model_dir, tmp_path / "one", TOY_EXAMPLES, precision="fp32")
    options = dict(lr=1.0e-3, epochs=1, batch_size=4, micro_batch_size=2, max_length=64, schedule=FLAT, seed=0)
    arguments = dict(student_path=str(tiny_model_dir), train=str(train_file), out_dir=str(tmp_path / "two"))
    two = run_stage("sft", {**arguments, **options, "precision": "fp32"}, processes=2, threads=2)
    # 8 examples in global batches of 4: 2 optimizer steps, each rank one micro-batch of 2 per step.
    assert (one["steps"], one["gradient_accumulation"], one["gradient_checkpointing"]) == (2, 2, False)
    assert (two["steps"], two["gradient_accumulation"], two["gradient_checkpointing"]) == (2, 1, True)
    assert two["processes"] == 2 and not two["fsdp"] and two["schedule"] == one["schedule"]
    assert two["first_loss"] == pytest.approx(one["first_loss"], abs=1e-6)
    assert two["final_loss"] == pytest.approx(one["final_loss"], abs=1e-6)
    # Rank 0 alone wrote the folder: a plain model with its chat format, as a one-process run writes it.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert saved_format(tmp_path / "two") == saved_format(tmp_path / "one")
    before, a, b = weights(tiny_model_dir), weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    moved = max((a[name] - before[name]).abs().max().item() for name in a)
    assert moved > 1e-4  # the runs did move the weights
    assert max((a[name] - b[name]).abs().max().item() for name in a) <= 0.01 * moved
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two").config.use_cache


def test_a_batch_that_does_not_split_over_the_processes_fails_naming_the_keys(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"sft.batch_size = 4\) does not split over 3 process.*sft.micro_batch_size"):
        train(tiny_model_dir, tmp_path / "s", TOY_EXAMPLES)
    assert not (tmp_path / "s").exists()
