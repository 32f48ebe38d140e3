import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from montessori.student import (
    IGNORE_INDEX,
    collate,
    encode_example,
    example_losses,
    load_model,
    load_optimizer,
)
from montessori.warm_up import warm_up
from tests.conftest import TOY_EXAMPLES as EXAMPLES

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def warm_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "student"
    summary = warm_up(tiny_model_dir, EXAMPLES, out, lr=1e-3, epochs=3, batch_size=3, max_length=MAX_LENGTH, seed=0)
    assert summary["steps"] == 9
    return out


def test_micro_batches_and_gradient_checkpointing_take_the_same_steps(warm_dir, tiny_model_dir, tmp_path):
    """warmup.micro_batch_size and gradient_checkpointing change only memory: a batch of 3 in passes of 1 and 2
    with layers recomputed in the backward pass gives the weights and AdamW moments of one pass."""
    out = tmp_path / "student"
    summary = warm_up(
        tiny_model_dir, EXAMPLES, out, lr=1e-3, epochs=3, batch_size=3, max_length=MAX_LENGTH, seed=0,
        micro_batch_size=2, gradient_checkpointing=True,
    )  # fmt: skip
    assert (summary["micro_batch_size"], summary["gradient_checkpointing"]) == (2, True)
    one_pass = AutoModelForCausalLM.from_pretrained(warm_dir / "model").state_dict()
    passes = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    # Checkpointing alone is bitwise equal; passes of 2 pad and sum in another order: relative L2 2.4e-5 measured.
    assert max(relative(passes[name], weight) for name, weight in one_pass.items()) < 1e-4
    moments = [torch.load(d / "optimizer.pt", weights_only=True)["state_dict"]["state"] for d in (warm_dir, out)]
    for i, state in moments[0].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert relative(moments[1][i][key], state[key]) < 1e-4, (i, key)
    with pytest.raises(ValueError, match="micro_batch_size must be at least 1"):
        warm_up(tiny_model_dir, EXAMPLES, tmp_path / "x", lr=1e-3, micro_batch_size=0)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def plain_loss(model, example) -> float:
    """Mean next-token loss over label tokens of one unpadded example, from the full logits."""
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return F.cross_entropy(logits[:-1].double(), labels[1:], ignore_index=IGNORE_INDEX).item()


def test_encode_example_masks_exactly_the_prompt(tokenizer):
    example = encode_example(tokenizer, "Say hi.", "Hi there!", MAX_LENGTH)
    user = [{"role": "user", "content": "Say hi."}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    labels, ids = example["labels"], example["input_ids"]
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert answer == ids[n_prompt : n_prompt + len(answer)]
    # The answer's end-of-turn token is a target although it doubles as the pad token.
    assert tokenizer.decode(answer) == "Hi there!<|im_end|>"
    assert answer[-1] == tokenizer.pad_token_id
    assert tokenizer.decode(ids[n_prompt + len(answer) :]) == "\n"


def test_encode_example_truncates_keeping_the_start(tokenizer):
    full = encode_example(tokenizer, "Say hi.", "word " * 50, 200)
    short = encode_example(tokenizer, "Say hi.", "word " * 50, 40)
    assert short["input_ids"] == full["input_ids"][:40]
    assert short["labels"] == full["labels"][:40]
    with pytest.raises(ValueError, match="max_length=20 leaves no answer token"):
        encode_example(tokenizer, "Say hi.", "Hi.", 20)


def test_collate_pads_by_length_not_by_id(tokenizer):
    a = encode_example(tokenizer, "Say hi.", "Hi!", MAX_LENGTH)
    b = encode_example(tokenizer, "Name a colour.", "Blue is a colour.", MAX_LENGTH)
    batch = collate([a, b], tokenizer.pad_token_id)
    width = max(len(a["input_ids"]), len(b["input_ids"]))
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(a["input_ids"]), len(b["input_ids"])]
    assert batch["labels"][0, : len(a["labels"])].tolist() == a["labels"]
    assert (batch["labels"][0, len(a["labels"]) :] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, len(a["input_ids"]) :] == tokenizer.pad_token_id).all()


def test_example_losses_match_unpadded_computation(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [encode_example(tokenizer, r.instruction, r.response, MAX_LENGTH) for r in EXAMPLES.itertuples()][:4]
    with torch.no_grad():
        batched = example_losses(model, collate(examples, tokenizer.pad_token_id))
    expected = torch.tensor([plain_loss(model, e) for e in examples], dtype=torch.float64)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-6)


def test_warm_up_lowers_the_training_loss(tiny_model_dir, warm_dir, tokenizer):
    examples = [encode_example(tokenizer, r.instruction, r.response, MAX_LENGTH) for r in EXAMPLES.itertuples()]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    warm, _ = load_model(warm_dir / "model")
    assert sum(plain_loss(warm, e) for e in examples) < sum(plain_loss(base, e) for e in examples) - 1.0


def test_warm_up_checkpoint_round_trips(warm_dir):
    model, _ = load_model(warm_dir / "model")
    optimizer = load_optimizer(model, warm_dir / "optimizer.pt")
    saved = torch.load(warm_dir / "optimizer.pt", weights_only=True)
    assert saved["hyperparameters"] == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    params = list(model.parameters())
    assert len(optimizer.state) == len(params) == len(saved["state_dict"]["state"])
    for index, param in enumerate(params):
        state, stored = optimizer.state[param], saved["state_dict"]["state"][index]
        assert state["step"].item() == 9
        assert state["exp_avg"].shape == param.shape
        assert state["exp_avg_sq"].abs().sum() > 0
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], stored[key])


def test_load_optimizer_refuses_other_parameters(tiny_model_dir, warm_dir):
    model, _ = load_model(warm_dir / "model")
    model.lm_head = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="optimizer.pt: the optimizer state was saved for other parameters"):
        load_optimizer(model, warm_dir / "optimizer.pt")


def test_warm_up_leaves_nothing_on_failure(tiny_model_dir, tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr("montessori.warm_up.save_optimizer", fail)
    out = tmp_path / "student"
    with pytest.raises(RuntimeError, match="disk full"):
        warm_up(tiny_model_dir, EXAMPLES[:2], out, lr=1e-3, max_length=MAX_LENGTH)
    assert list(tmp_path.iterdir()) == []
