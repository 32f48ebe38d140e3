"""Benchmark: the influence engine against the naive procedure of the original Montessori-Instruct code.

The naive procedure reloads the warm student and its optimizer from disk for every candidate and pads every
sequence (the candidate's and each reference's) to max_length. Both start from the same warm-up checkpoint
and score the same candidates; the script prints seconds per candidate, the speed-up and the largest score
difference.

    python benchmarks/influence.py [--model DIR] [--n-candidates N] [--n-references M] [--max-length L]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from montessori.influence import InfluenceEngine
from montessori.io import read_records
from montessori.pool import reference_set, seed_text
from montessori.student import IGNORE_INDEX, collate, encode_example, load_model, load_optimizer, warm_up

ROOT = Path(__file__).resolve().parent.parent
REAL_MODEL = ROOT / "resources" / "models" / "smollm2-135m-instruct"
TINY_MODEL = ROOT / "resources" / "models" / "tiny-random-llama"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = REAL_MODEL if (REAL_MODEL / "config.json").exists() else TINY_MODEL
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--n-candidates", type=int, default=3)
    parser.add_argument("--n-references", type=int, default=8)
    parser.add_argument("--n-warm-up", type=int, default=4, help="warm-up examples (batch size 4)")
    parser.add_argument("--max-length", type=int, default=1024, help="the paper's token limit")
    parser.add_argument(
        "--reference-batch-size", type=int, default=1, help="the engine's; on CPU padding is pure waste, 1 is fastest"
    )
    parser.add_argument("--naive-reference-batch-size", type=int, default=8, help="the original code's eval batch size")
    parser.add_argument("--lr", type=float, default=5e-6)
    # One thread: with two, every operator waits for a sibling thread that other jobs on a shared machine can
    # deschedule, and timings then measure the neighbours more than the procedures.
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default")
    parser.add_argument(
        "--references",
        type=Path,
        default=ROOT / "data" / "montessori_instruct" / "reference_dataset_alpaca_eval_gpt4_1106_preview.json",
    )
    parser.add_argument("--seeds", type=Path, default=ROOT / "data" / "seed_pool" / "alpaca_gpt4_en_demo_999.json")
    return parser.parse_args()


def examples_from_seeds(path: Path, n: int) -> pd.DataFrame:
    """Alpaca-GPT4 records stand in for teacher output: real instruction/response lengths."""
    records = read_records(path, required=("instruction", "output"))[:n]
    return pd.DataFrame(
        {
            "instruction": [seed_text(r["instruction"], str(r.get("input") or "")) for r in records],
            "response": [r["output"] for r in records],
        }
    )


def padded(example: dict[str, list[int]], width: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    batch = collate([example], pad_token_id)
    extra = width - batch["input_ids"].shape[1]
    return {
        "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_token_id),
        "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
        "labels": F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX),
    }


def full_logit_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example mean label loss from the logits of every position, padding included."""
    batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    sums = torch.stack(
        [
            F.cross_entropy(row.double(), target, ignore_index=IGNORE_INDEX, reduction="sum")
            for row, target in zip(logits, targets)
        ]
    )
    return sums / (targets != IGNORE_INDEX).sum(dim=1)


def naive_reference_loss(model, references: list, pad_token_id: int, args) -> float:
    """Mean reference loss with every reference padded to max_length."""
    total = 0.0
    with torch.inference_mode():
        size = args.naive_reference_batch_size
        for first in range(0, len(references), size):
            rows = [padded(r, args.max_length, pad_token_id) for r in references[first : first + size]]
            batch = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}
            total += full_logit_losses(model, batch).sum().item()
    return total / len(references)


def naive_loss_after(model_dir: Path, optimizer_path: Path, references: list, example: dict, args) -> float:
    """Reload the warm student and optimizer from disk, step on the padded candidate, evaluate."""
    model, tokenizer = load_model(model_dir)
    optimizer = load_optimizer(model, optimizer_path)
    full_logit_losses(model, padded(example, args.max_length, tokenizer.pad_token_id)).sum().backward()
    optimizer.step()
    return naive_reference_loss(model, references, tokenizer.pad_token_id, args)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = examples_from_seeds(args.seeds, args.n_warm_up + args.n_candidates)
    references = reference_set(args.references, args.n_references)
    candidates = examples.iloc[args.n_warm_up :].reset_index(drop=True)
    candidates = candidates.assign(
        candidate_id=[f"c{i:04d}" for i in range(len(candidates))],
        prompt_id=[f"p{i // 4:04d}" for i in range(len(candidates))],
        verdict="ok",
    )
    print(
        f"model {args.model}, {len(candidates)} candidates, {len(references)} references, "
        f"max_length {args.max_length}, reference batch {args.reference_batch_size} (naive "
        f"{args.naive_reference_batch_size}), {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory(prefix="influence-benchmark-") as workdir:
        warm = Path(workdir) / "student"
        warm_up(args.model, examples.iloc[: args.n_warm_up], warm, lr=args.lr, batch_size=4, max_length=args.max_length)
        model_dir, optimizer_path = warm / "model", warm / "optimizer.pt"

        started = time.perf_counter()
        engine = InfluenceEngine(model_dir, optimizer_path, references, args.max_length, args.reference_batch_size)
        engine_setup = time.perf_counter() - started
        tokenizer = engine.tokenizer
        encoded_refs = [
            encode_example(tokenizer, r.instruction, r.response, args.max_length) for r in references.itertuples()
        ]
        started = time.perf_counter()
        naive_before = naive_reference_loss(engine.model, encoded_refs, tokenizer.pad_token_id, args)
        naive_setup = time.perf_counter() - started

        # Engine and naive alternate candidate by candidate, so that load from other jobs on a shared
        # machine falls on both alike.
        engine_seconds, naive_seconds, engine_scores, naive_scores, lengths = 0.0, 0.0, [], [], []
        for index in range(len(candidates)):
            row = candidates.iloc[[index]]
            started = time.perf_counter()
            engine_scores.append(engine.score(row, "before_step")["influence_before_step"].iloc[0])
            engine_seconds += time.perf_counter() - started
            example = encode_example(tokenizer, row["instruction"].iloc[0], row["response"].iloc[0], args.max_length)
            lengths.append(len(example["input_ids"]))
            started = time.perf_counter()
            naive_scores.append(naive_before - naive_loss_after(model_dir, optimizer_path, encoded_refs, example, args))
            naive_seconds += time.perf_counter() - started

    n = len(candidates)
    difference = max(abs(a - b) for a, b in zip(engine_scores, naive_scores))
    print(f"reference tokens {sorted(len(r['input_ids']) for r in encoded_refs)}")
    print(f"candidate tokens {lengths}")
    print(f"engine: setup {engine_setup:.1f} s (load, L_ref before, null step), {engine_seconds / n:.2f} s/candidate")
    print(f"naive:  setup {naive_setup:.1f} s (L_ref before), {naive_seconds / n:.2f} s/candidate")
    speed_up = naive_seconds / engine_seconds
    print(f"speed-up per candidate: {speed_up:.2f}x (goal >= 3x: {'met' if speed_up >= 3 else 'NOT met'})")
    print(f"max |influence difference|: {difference:.3e} (goal <= 1e-5: {'met' if difference <= 1e-5 else 'NOT met'})")
    print(f"influence: {[round(float(x), 6) for x in engine_scores]}")


if __name__ == "__main__":
    main()
