import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from montessori.influence import InfluenceEngine
from montessori.influence_base import SCORE_COLUMNS, SavedLosses
from montessori.shards import gather, shard_of
from montessori.student import IGNORE_INDEX, encode_example, load_model, load_optimizer
from montessori.warm_up import warm_up
from tests.conftest import TOY_EXAMPLES as WARM_UP

MAX_LENGTH = 80
REFERENCES = pd.DataFrame(
    {
        "reference_id": ["r1", "r2", "r3", "r4"],
        "instruction": ["Name a colour.", "What is three plus one?", "Name a large animal of the sea.", "Hi"],
        "response": ["Blue.", "Three plus one is four.", "The blue whale is the largest.", "Hello! How can I help?"],
    }
)
CANDIDATES = pd.DataFrame(
    {
        "candidate_id": ["c3", "c1", "c5", "c2", "c4"],
        "prompt_id": ["p1", "p1", "p2", "p2", "p2"],
        "instruction": [
            "Name a vegetable.",
            "What is one plus one?",
            "Write a long list of animals.",
            "Say something kind.",
            "Name a month.",
        ],
        "response": [
            "A carrot.",
            "Two.",
            "Dog, cat, horse, cow, sheep, goat, pig, hen, duck, goose, fox, wolf, bear, deer, lion, tiger, " * 3,
            "You are doing great.",
            "March.",
        ],
        "verdict": ["ok", "ok", "ok", "ok", "too_long"],
        "seed_ids": [["s1", "s2"], ["s1"], ["s3"], ["s2"], ["s4"]],
    }
)


@pytest.fixture(scope="module")
def warm_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "student"
    warm_up(tiny_model_dir, WARM_UP, out, lr=1e-3, epochs=2, batch_size=4, max_length=MAX_LENGTH, seed=0)
    return out


def new_engine(warm_dir) -> InfluenceEngine:
    return InfluenceEngine(warm_dir / "model", warm_dir / "optimizer.pt", REFERENCES, MAX_LENGTH, 3)


@pytest.fixture(scope="module")
def engine(warm_dir):
    return new_engine(warm_dir)


@pytest.fixture(scope="module")
def scores(engine):
    return engine.score(CANDIDATES, "null_step")


@pytest.fixture(scope="module")
def plain(warm_dir):
    """The warm student and optimizer loaded afresh, and the unbatched, unpadded reference loss."""
    model, _ = load_model(warm_dir / "model")
    optimizer = load_optimizer(model, warm_dir / "optimizer.pt")
    tokenizer = AutoTokenizer.from_pretrained(warm_dir / "model")
    references = [encode_example(tokenizer, r.instruction, r.response, MAX_LENGTH) for r in REFERENCES.itertuples()]

    def reference_loss(m) -> float:
        return sum(plain_loss(m, e).item() for e in references) / len(references)

    return model, optimizer, tokenizer, reference_loss


def plain_loss(model, example) -> torch.Tensor:
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"])
    logits = model(input_ids=ids).logits[0]
    return F.cross_entropy(logits[:-1].double(), labels[1:], ignore_index=IGNORE_INDEX)


def snapshot(engine):
    weights = [p.detach().clone() for p in engine.model.parameters()]
    state = [{k: v.clone() for k, v in engine.optimizer.state[p].items()} for p in engine.model.parameters()]
    return weights, state


def test_influence_equals_a_plain_computation(scores, plain):
    model, optimizer, tokenizer, reference_loss = plain
    with torch.no_grad():
        loss_before = reference_loss(model)
    assert scores["loss_before"].iloc[0] == pytest.approx(loss_before, abs=1e-6)
    ok = CANDIDATES[CANDIDATES["verdict"] == "ok"]
    for row in ok.itertuples():
        step_model, step_optimizer = copy.deepcopy((model, optimizer))
        assert step_optimizer.param_groups[0]["params"][0] is next(step_model.parameters())
        plain_loss(step_model, encode_example(tokenizer, row.instruction, row.response, MAX_LENGTH)).backward()
        step_optimizer.step()
        with torch.no_grad():
            loss_after = reference_loss(step_model)
        scored = scores.set_index("candidate_id").loc[row.candidate_id]
        assert scored["loss_after"] == pytest.approx(loss_after, abs=1e-6)
        assert scored["influence_before_step"] == pytest.approx(loss_before - loss_after, abs=1e-6)
        assert abs(loss_before - loss_after) > 1e-4


def test_null_step_is_a_zero_gradient_adamw_step(engine, plain):
    model, optimizer, _, reference_loss = plain
    (group,) = optimizer.param_groups
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for param, original in zip(moved.parameters(), model.parameters()):
            state = optimizer.state[original]
            step = state["step"].item() + 1
            exp_avg, exp_avg_sq = beta1 * state["exp_avg"], beta2 * state["exp_avg_sq"]
            denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5) + eps
            param.mul_(1 - lr * wd).sub_(lr / (1 - beta1**step) * exp_avg / denom)
        expected = reference_loss(moved)
    assert engine.loss_null_step == pytest.approx(expected, abs=1e-6)
    assert abs(engine.loss_null_step - engine.loss_before) > 1e-4


def test_scores_are_reproducible_and_restore_restores(engine, scores, warm_dir):
    weights, state = snapshot(engine)
    again = engine.score(CANDIDATES, "null_step")
    pd.testing.assert_frame_equal(again, scores, check_exact=True)
    after_weights, after_state = snapshot(engine)
    assert all(torch.equal(a, b) for a, b in zip(weights, after_weights))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(state, after_state) for k in a)
    assert all(p.grad is None for p in engine.model.parameters())
    rerun = new_engine(warm_dir).score(shard_of(CANDIDATES, 1, 2), "null_step")
    expected = scores.set_index("candidate_id").loc[rerun["candidate_id"]].reset_index()
    pd.testing.assert_frame_equal(rerun, expected, check_exact=True)


def test_score_columns_baseline_and_pass_through(engine, scores):
    assert list(scores.columns) == SCORE_COLUMNS + ["instruction", "response", "verdict", "seed_ids"]
    assert scores["candidate_id"].tolist() == ["c3", "c1", "c5", "c2"]
    assert scores["seed_ids"].tolist() == [["s1", "s2"], ["s1"], ["s3"], ["s2"]]
    assert (scores["influence"] == scores["influence_null_step"]).all()
    assert (scores["baseline"] == "null_step").all()
    assert (scores["influence_null_step"] == engine.loss_null_step - scores["loss_after"]).all()
    before = engine.score(CANDIDATES.iloc[:1], "before_step")
    assert before["influence"].iloc[0] == before["influence_before_step"].iloc[0]
    assert before["influence"].iloc[0] == scores["influence_before_step"].iloc[0]
    with pytest.raises(ValueError, match="influence.baseline: 'after' is not one of"):
        engine.score(CANDIDATES, "after")


def test_no_ok_candidate_gives_an_empty_frame(engine):
    empty = engine.score(CANDIDATES[CANDIDATES["verdict"] != "ok"], "before_step")
    assert empty.empty
    assert list(empty.columns)[: len(SCORE_COLUMNS)] == SCORE_COLUMNS


def test_an_unscorable_candidate_is_named(engine):
    long_prompt = CANDIDATES.iloc[:1].assign(candidate_id="c9", instruction="Please " * 100)
    with pytest.raises(ValueError, match="candidate c9: the prompt alone is"):
        engine.score(long_prompt, "before_step")


def test_empty_reference_set_is_refused(warm_dir):
    with pytest.raises(ValueError, match="the reference set is empty"):
        InfluenceEngine(warm_dir / "model", warm_dir / "optimizer.pt", REFERENCES.iloc[:0], MAX_LENGTH, 2)


def test_shards_are_disjoint_cover_everything_and_ignore_row_order():
    shards = [shard_of(CANDIDATES, i, 3) for i in range(3)]
    ids = [set(s["candidate_id"]) for s in shards]
    assert set().union(*ids) == set(CANDIDATES["candidate_id"])
    assert sum(len(s) for s in ids) == len(CANDIDATES)
    shuffled = CANDIDATES.sample(frac=1, random_state=1)
    for i, shard in enumerate(shards):
        pd.testing.assert_frame_equal(shard_of(shuffled, i, 3), shard)
    with pytest.raises(ValueError, match="shard 3 of 3"):
        shard_of(CANDIDATES, 3, 3)


def test_gather_is_independent_of_shard_order_and_refuses_repeats(scores):
    parts = [shard_of(scores, i, 3) for i in range(3)]
    gathered = gather(parts)
    assert gathered["candidate_id"].tolist() == ["c1", "c2", "c3", "c5"]
    pd.testing.assert_frame_equal(gather(parts[::-1]), gathered)
    with pytest.raises(ValueError, match=r"appear in more than one shard row, e.g. \['c1', 'c5'\]"):
        gather([parts[0], parts[0]])


def test_a_resumed_shard_computes_only_what_was_not_saved(engine, scores):
    """The losses a killed shard saved are reused as saved; the rest are computed, and the frame is the same."""
    saves = []
    first = engine.score(CANDIDATES, "null_step", SavedLosses(save=saves.append, every=2))
    pd.testing.assert_frame_equal(first, scores)
    assert [len(step) for step in saves] == [2, 2]  # 4 scorable candidates, saved 2 at a time
    computed = []
    engine.loss_after_step, original = (lambda e: computed.append(e) or original(e)), engine.loss_after_step
    try:
        resumed = engine.score(CANDIDATES, "null_step", SavedLosses(done=dict(saves[0])))
    finally:
        del engine.loss_after_step
    pd.testing.assert_frame_equal(resumed, scores)
    assert len(computed) == 2
