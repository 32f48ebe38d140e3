"""Warm-up and exact influence in 2 processes (FSDP2 over gloo, montessori.sharding) against one process."""

import os
import shutil
import time

import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from montessori.config import validate_config
from montessori.influence import InfluenceEngine
from montessori.influence_modes import check_processes, run_shard
from montessori.launch import run_stage
from montessori.pairs import pairable
from montessori.student import collate, encode_example, example_losses, load_model, load_optimizer
from tests.conftest import ROOT, TOY_EXAMPLES, make_workdir, run_snakemake
from tests.test_influence import CANDIDATES, REFERENCES

MAX_LENGTH = 80
# 7 examples in batches of 3: the last batch has one example, so rank 1 takes a zero-weight step.
WARM_UP = TOY_EXAMPLES.iloc[:7]
# 5 references in batches of 2 over 2 ranks: rank 0 has 2 batches, rank 1 one and a zero-weight filler.
FIVE_REFERENCES = pd.concat(
    [REFERENCES, pd.DataFrame({"reference_id": ["r5"], "instruction": ["Name a bird."], "response": ["A robin."]})],
    ignore_index=True,
)
CFG = {
    "mode": "exact",
    "baseline": "null_step",
    "max_length": MAX_LENGTH,
    "reference_batch_size": 2,
    "candidate_batch_size": 2,
    "validate": 0,
    "save_every": 1,
}
LOSS_COLUMNS = ["loss_before", "loss_null_step", "loss_after"]
INFLUENCE_COLUMNS = ["influence_before_step", "influence_null_step", "influence"]
# Measured 2 vs 1 process (float32 weights and forwards, float64 loss sums): weights 4.4e-6 relative L2 (the
# largest tensor's), moments 3.9e-6, losses and influences 5.2e-8 absolute (on losses of ~10 nats).
WEIGHT_TOLERANCE = 1e-5
MOMENT_TOLERANCE = 2e-5
LOSS_TOLERANCE = 1e-6
INFLUENCE_TOLERANCE = 1e-6
SECONDS = {}


def safe_open_keys(warm_dir) -> set[str]:
    with safe_open(warm_dir / "model" / "model.safetensors", "pt") as f:
        return set(f.keys())


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def warm(tiny_model_dir, tmp_path_factory):
    """The same warm-up in one process and in two; the summaries and the output folders."""
    root = tmp_path_factory.mktemp("sharded")
    examples = root / "examples.parquet"
    WARM_UP.to_parquet(examples, index=False)
    arguments = {
        "model_path": str(tiny_model_dir),
        "examples": str(examples),
        "lr": 1e-3,
        "epochs": 2,
        "batch_size": 3,
        "max_length": MAX_LENGTH,
        "seed": 0,
        # Passes of one example: a batch of 3 gives the ranks 2 and 1, so rank 1 makes a zero-weight second pass.
        # Two processes also recompute layers (gradient_checkpointing auto: on with 2 processes) under FSDP.
        "micro_batch_size": 1,
    }
    summaries = {}
    for processes in (1, 2):
        started = time.perf_counter()
        out = root / f"warm{processes}"
        summaries[processes] = run_stage(
            "warm_up", {**arguments, "out_dir": str(out)}, processes, threads=2, log_path=root / f"warm{processes}.log"
        )
        SECONDS[f"warm_up {processes}"] = time.perf_counter() - started
    return summaries, root


def test_two_process_warm_up_matches_one_process(warm):
    summaries, root = warm
    assert summaries[2]["processes"] == 2 and summaries[2]["steps"] == summaries[1]["steps"] == 6
    assert summaries[2]["gradient_checkpointing"] and not summaries[1]["gradient_checkpointing"]
    one = AutoModelForCausalLM.from_pretrained(root / "warm1" / "model").state_dict()
    two = AutoModelForCausalLM.from_pretrained(root / "warm2" / "model").state_dict()
    assert one.keys() == two.keys()
    # The same files as a one-process save: a tied head is not saved twice, and the 2-process student loads in one.
    assert safe_open_keys(root / "warm2") == safe_open_keys(root / "warm1")
    load_optimizer(load_model(root / "warm2" / "model")[0], root / "warm2" / "optimizer.pt")
    weights = max(relative(two[k], one[k]) for k in one)
    saved = {p: torch.load(root / f"warm{p}" / "optimizer.pt", weights_only=True) for p in (1, 2)}
    assert saved[1]["param_names"] == saved[2]["param_names"]
    assert saved[1]["hyperparameters"] == saved[2]["hyperparameters"]
    state1, state2 = saved[1]["state_dict"]["state"], saved[2]["state_dict"]["state"]
    assert state1.keys() == state2.keys() and len(state1) == len(saved[1]["param_names"])
    moments = {key: max(relative(state2[i][key], state1[i][key]) for i in state1) for key in ("exp_avg", "exp_avg_sq")}
    assert all(float(state2[i]["step"]) == float(state1[i]["step"]) == 6 for i in state1)
    print(f"\nwarm-up 2 vs 1 process: weights rel L2 {weights:.2e}, moments {moments}, seconds {SECONDS}")
    assert abs(summaries[2]["final_loss"] - summaries[1]["final_loss"]) < 1e-5
    assert weights < WEIGHT_TOLERANCE
    assert max(moments.values()) < MOMENT_TOLERANCE


@pytest.fixture(scope="module")
def scores(warm):
    """Exact influence of the same shard over the one-process warm student, in one process and in two."""
    _, root = warm
    candidates, references = root / "candidates.parquet", root / "references.parquet"
    CANDIDATES.to_parquet(candidates, index=False)
    FIVE_REFERENCES.to_parquet(references, index=False)
    arguments = {
        "candidates": str(candidates),
        "model_dir": str(root / "warm1" / "model"),
        "optimizer_path": str(root / "warm1" / "optimizer.pt"),
        "references": str(references),
        "cfg": CFG,
        "seed": 0,
        "shard": 1,
    }
    frames = {}
    for processes in (1, 2):
        started = time.perf_counter()
        out = root / f"scores{processes}.parquet"
        summary = run_stage(
            "influence_shard",
            {**arguments, "out": str(out)},
            processes,
            threads=2,
            log_path=root / f"influence{processes}.log",
        )
        SECONDS[f"influence {processes}"] = time.perf_counter() - started
        assert summary == {"candidates": 4, "resumed": 0, "processes": processes}
        frames[processes] = pd.read_parquet(out)
    return frames


def test_two_process_influence_matches_one_process(scores):
    one, two = scores[1], scores[2]
    assert list(two.columns) == list(one.columns) and len(one) == 4
    assert two["candidate_id"].tolist() == one["candidate_id"].tolist()
    assert (two["shard"] == 1).all() and (two["mode"] == "exact").all()
    losses = max((two[c] - one[c]).abs().max() for c in LOSS_COLUMNS)
    influences = max((two[c] - one[c]).abs().max() for c in INFLUENCE_COLUMNS)
    print(f"\ninfluence 2 vs 1 process: losses max abs {losses:.2e}, influences max abs {influences:.2e}, {SECONDS}")
    print(one[["candidate_id", *LOSS_COLUMNS, "influence"]].to_string())
    assert losses < LOSS_TOLERANCE and influences < INFLUENCE_TOLERANCE


def test_a_step_on_g_over_g_would_be_caught(warm, scores):
    """Had each rank stepped on g/G (the candidate's loss split over G = 2 ranks and averaged once more), the loss
    after the step would be that of a step on g/2: far further from the one-process scores than the tolerance."""
    _, root = warm
    engine = InfluenceEngine(root / "warm1" / "model", root / "warm1" / "optimizer.pt", FIVE_REFERENCES, MAX_LENGTH, 2)
    row = CANDIDATES[CANDIDATES["candidate_id"] == "c1"].iloc[0]
    batch = collate([encode_example(engine.tokenizer, row.instruction, row.response, MAX_LENGTH)], 0)
    try:
        engine.optimizer.zero_grad(set_to_none=True)
        (example_losses(engine.model, batch).sum() / 2).backward()
        engine.optimizer.step()
        halved = engine.reference_loss()
    finally:
        engine.restore()
    two = scores[2].set_index("candidate_id")
    gap = abs(halved - two.loc["c1", "loss_after"])
    print(f"\nloss after a step on g/2 vs the 2-process loss after g: {gap:.2e}")
    assert gap > 100 * LOSS_TOLERANCE


def test_first_order_in_several_processes_fails_before_any_work(monkeypatch, tmp_path):
    check_processes("first_order", 1)
    check_processes("exact", 4)
    with pytest.raises(ValueError, match=r"given 2.*cpu_processes.*influence_shard:cpu_processes=1"):
        check_processes("first_order", 2)
    # A rank of a 2-process job refuses first_order before it reads a file.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="influence.mode 'first_order' runs in one process"):
        run_shard(str(tmp_path / "none.parquet"), "", "", "", {**CFG, "mode": "first_order"}, 0, 1, "")


@pytest.mark.e2e
def test_two_process_jobs_through_the_snakemake_rules(test_config_run, tmp_path):
    """The test config's warm-up and exact influence shards as 2-process jobs (`cpu_processes=2`) through the
    rules, on the real SmolLM2 student and the test config run's own candidates; the gathered scores equal a
    one-process scoring of the same shards."""
    config = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    config["experiment"] = "test-2proc-rules"
    config["influence"].update(mode="exact", validate=0)  # first_order runs in one process only
    config_path = tmp_path / "two_processes.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    workdir = make_workdir(tmp_path / "work")
    results = workdir / "results" / "test-2proc-rules"
    # The slice's inputs from the finished run, in the order their jobs wrote them: without Snakemake's records,
    # only their modification times could make Snakemake redo them.
    _, finished = test_config_run
    for step, relative in enumerate(("pool/seeds.parquet", "warmup/candidates.parquet", "iter1/candidates.parquet")):
        (results / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(finished / relative, results / relative)
        if relative.startswith("iter1"):
            # Two pairable prompts' candidates: the exact engine's steps on SmolLM2 cost seconds each.
            candidates = pd.read_parquet(results / relative)
            kept = pairable(candidates)["prompt_id"].drop_duplicates().head(2)
            candidates[candidates["prompt_id"].isin(kept)].to_parquet(results / relative, index=False)
        os.utime(results / relative, (time.time() - 100 + step, time.time() - 100 + step))
    run_snakemake(
        workdir, "results/test-2proc-rules/iter1/influence.parquet", "--configfile", str(config_path), "--cores", "2",
        "--set-resources", "warmup_student:cpu_processes=2", "influence_shard:cpu_processes=2",
    )  # fmt: skip
    assert not (results / "logs/synthesize_iteration").exists()  # the run's candidates were used

    assert "launching warm_up in 2 processes" in (results / "logs/warmup_student.log").read_text()
    for shard in (1, 2):
        log = (results / f"logs/influence_shard/iter1-{shard}-of-2.log").read_text()
        assert "launching influence_shard in 2 processes" in log
    gathered = pd.read_parquet(results / "iter1/influence.parquet")
    candidates = pd.read_parquet(results / "iter1/candidates.parquet")
    assert set(gathered["candidate_id"]) == set(pairable(candidates)["candidate_id"])

    one_process = []
    for shard in (1, 2):
        out = tmp_path / f"one_process_{shard}.parquet"
        shard_candidates = gathered.loc[gathered["shard"] == shard, ["candidate_id"]].merge(candidates)
        shard_candidates.to_parquet(tmp_path / f"candidates_{shard}.parquet", index=False)
        run_shard(
            str(tmp_path / f"candidates_{shard}.parquet"),
            str(results / "warmup/student/model"),
            str(results / "warmup/student/optimizer.pt"),
            str(results / "pool/reference.parquet"),
            validated_influence_config(config_path),
            seed=config["seed"],
            shard=shard,
            out=str(out),
        )
        one_process.append(pd.read_parquet(out))
    expected = pd.concat(one_process).set_index("candidate_id").sort_index()
    actual = gathered.set_index("candidate_id").sort_index()
    for column in LOSS_COLUMNS + INFLUENCE_COLUMNS:
        assert (actual[column] - expected[column]).abs().max() < LOSS_TOLERANCE, column


def validated_influence_config(path) -> dict:
    """The influence params a rule passes its script: the config file's section with the schema's defaults."""
    return validate_config(yaml.safe_load(path.read_text()))["influence"]
