"""Benchmark: the influence modes against each other and against the naive procedure, at two reference-set sizes.

On the same warm student, candidates and reference sets:
- naive: the original Montessori-Instruct procedure; it reloads the warm student and optimizer from disk for
  every candidate and pads every sequence (the candidate's and each reference's) to max_length;
- exact: montessori.influence.InfluenceEngine (`influence.mode: exact`);
- first_order: montessori.first_order.FirstOrderEngine (`influence.mode: first_order`) at K = 1 and at the
  fastest K of --batch-sizes (K candidates' per-example gradients in one vmap pass).
Every method runs in a process of its own, so that each peak RSS is its own. The script prints seconds per
candidate, every ratio, first_order's agreement with exact (Spearman, sign agreement, max relative error) and
first_order's memory. On a CPU the sequences are truncated (--instruction-tokens, --max-length) so that the
exact engine's 256 references fit in minutes; the script prints to what.

    python benchmarks/influence.py [--model DIR] [--n-candidates N] [--reference-sizes 32 256] [--max-length L]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from montessori.first_order import FirstOrderEngine, fit_candidate_batch, free_memory
from montessori.influence import InfluenceEngine
from montessori.influence_modes import agreement
from montessori.io import read_records
from montessori.pool import reference_set, seed_text
from montessori.student import IGNORE_INDEX, collate, encode_example, load_model, load_optimizer
from montessori.warm_up import warm_up

ROOT = Path(__file__).resolve().parent.parent
REAL_MODEL = ROOT / "resources" / "models" / "smollm2-135m-instruct"
TINY_MODEL = ROOT / "resources" / "models" / "tiny-random-llama"
BASELINES = ("before_step", "null_step")
GOALS = {"speed-up over exact at the largest reference set": 30, "Spearman": 0.99, "sign agreement": 0.98}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = REAL_MODEL if (REAL_MODEL / "config.json").exists() else TINY_MODEL
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--n-candidates", type=int, default=10)
    parser.add_argument("--reference-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--n-naive", type=int, default=1, help="candidates the naive procedure is timed on")
    # config.yaml's warm-up: 12 steps at batch size 1, so the AdamW state is as warm as the pipeline's.
    parser.add_argument("--n-warm-up", type=int, default=12, help="warm-up examples")
    parser.add_argument("--warm-up-batch-size", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=48, help="token limit of every sequence (paper: 1024)")
    parser.add_argument(
        "--instruction-tokens", type=int, default=12, help="instructions cut to this many tokens, so the prompt fits"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4], help="first_order K to try beyond 1")
    parser.add_argument("--reference-batch-size", type=int, default=8, help="exact and first_order")
    parser.add_argument("--naive-reference-batch-size", type=int, default=8, help="the original code's eval batch size")
    parser.add_argument("--lr", type=float, default=5e-6, help="warm-up and influence step (the paper's)")
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


class Stopwatch:
    """CPU seconds of this process, which other jobs on a shared machine barely change, and wall seconds."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def per(self, n: int = 1) -> tuple[float, float]:
        return (time.process_time() - self.cpu) / n, (time.perf_counter() - self.wall) / n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def cut_instructions(frame: pd.DataFrame, tokenizer, n_tokens: int) -> pd.DataFrame:
    cut = [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:n_tokens]) for t in frame.instruction]
    return frame.assign(instruction=cut)


def examples_from_seeds(path: Path, n: int) -> pd.DataFrame:
    """Alpaca-GPT4 records stand in for teacher output: real instructions and responses."""
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


def run_naive(warm: Path, references: pd.DataFrame, candidates: pd.DataFrame, args) -> dict:
    """Reload the warm student and optimizer per candidate, step on the padded candidate, evaluate padded."""
    set_threads(args.threads)
    clock = Stopwatch()
    model, tokenizer = load_model(warm / "model")
    encode = [encode_example(tokenizer, r.instruction, r.response, args.max_length) for r in references.itertuples()]
    before = naive_reference_loss(model, encode, tokenizer.pad_token_id, args)
    setup, _ = clock.per()
    influences = []
    clock = Stopwatch()
    for row in candidates.iloc[: args.n_naive].itertuples():
        model, tokenizer = load_model(warm / "model")
        optimizer = load_optimizer(model, warm / "optimizer.pt")
        example = encode_example(tokenizer, row.instruction, row.response, args.max_length)
        full_logit_losses(model, padded(example, args.max_length, tokenizer.pad_token_id)).sum().backward()
        optimizer.step()
        influences.append(before - naive_reference_loss(model, encode, tokenizer.pad_token_id, args))
    seconds, wall = clock.per(len(influences))
    return {"setup": setup, "seconds": seconds, "wall": wall, "influence": influences, "peak_rss_mb": peak_rss_mb()}


def run_exact(warm: Path, references: pd.DataFrame, candidates: pd.DataFrame, args) -> dict:
    set_threads(args.threads)
    clock = Stopwatch()
    engine = InfluenceEngine(
        warm / "model", warm / "optimizer.pt", references, args.max_length, args.reference_batch_size
    )
    setup, _ = clock.per()
    clock = Stopwatch()
    scores = engine.score(candidates, "null_step")
    seconds, wall = clock.per(len(scores))
    return {
        "setup": setup,
        "seconds": seconds,
        "wall": wall,
        "influence": {b: scores[f"influence_{b}"].tolist() for b in BASELINES},
        "peak_rss_mb": peak_rss_mb(),
    }


def run_first_order(warm: Path, references: pd.DataFrame, candidates: pd.DataFrame, args, sizes: list[int]) -> dict:
    """K = 1, then each K of `sizes` (lowered to what fits), in one engine; the peak RSS after each is that K's."""
    set_threads(args.threads)
    clock = Stopwatch()
    engine = FirstOrderEngine(
        warm / "model", warm / "optimizer.pt", references, args.max_length, args.reference_batch_size, 1
    )
    setup, _ = clock.per()
    n_params = engine.reference_gradient.numel()
    runs = {}
    for k in [1, *sizes]:
        engine.candidate_batch_size = fit_candidate_batch(k, n_params, free_memory(engine.reference_gradient.device))
        clock = Stopwatch()
        scores = engine.score(candidates, "null_step")
        seconds, wall = clock.per(len(scores))
        runs[engine.candidate_batch_size] = {
            "seconds": seconds,
            "wall": wall,
            "influence": {b: scores[f"influence_{b}"].tolist() for b in BASELINES},
            "peak_rss_mb": peak_rss_mb(),
        }
    return {"setup": setup, "n_params": n_params, "runs": runs}


def in_own_process(function, *args):
    # spawn, not fork: a fresh interpreter, so that ru_maxrss measures this method alone.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def prepare(args) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[int]]:
    """Warm-up examples, candidates and the largest reference set, instructions cut; candidates' token counts."""
    _, tokenizer = load_model(args.model, device=torch.device("cpu"))
    examples = examples_from_seeds(args.seeds, args.n_warm_up + args.n_candidates)
    examples = cut_instructions(examples, tokenizer, args.instruction_tokens)
    candidates = examples.iloc[args.n_warm_up :].reset_index(drop=True)
    candidates = candidates.assign(
        candidate_id=[f"c{i:04d}" for i in range(len(candidates))],
        prompt_id=[f"p{i // 4:04d}" for i in range(len(candidates))],
        verdict="ok",
    )
    references = reference_set(args.references, max(args.reference_sizes))
    references = cut_instructions(references, tokenizer, args.instruction_tokens)
    lengths = [
        len(encode_example(tokenizer, r.instruction, r.response, args.max_length)["input_ids"])
        for r in candidates.itertuples()
    ]
    return examples.iloc[: args.n_warm_up], candidates, references, lengths


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    warm_examples, candidates, all_references, lengths = prepare(args)
    print(
        f"model {args.model.name}, {len(candidates)} candidates, reference sets of {args.reference_sizes}, "
        f"lr {args.lr}, warm-up {args.n_warm_up} examples at batch size {args.warm_up_batch_size}, "
        f"{args.threads or torch.get_num_threads()} thread(s), naive timed on {args.n_naive} candidate(s)\n"
        f"truncated: instructions to {args.instruction_tokens} tokens, then every sequence to "
        f"{args.max_length} tokens (chat template included); candidate tokens {lengths}"
    )
    rows, agreements, ratios, best_k, n_params = [], [], {}, None, 0
    with tempfile.TemporaryDirectory(prefix="influence-benchmark-") as workdir:
        warm = Path(workdir) / "student"
        warm_up(
            args.model, warm_examples, warm, args.lr, batch_size=args.warm_up_batch_size, max_length=args.max_length
        )
        for size in sorted(args.reference_sizes):
            references = all_references.iloc[:size]
            naive = in_own_process(run_naive, warm, references, candidates, args)
            exact = in_own_process(run_exact, warm, references, candidates, args)
            # The K sweep runs once, at the smallest set: a candidate's cost does not depend on the references.
            first = in_own_process(run_first_order, warm, references, candidates, args, args.batch_sizes
                                   if best_k is None else [best_k])  # fmt: skip
            if best_k is None:
                batched = {k: run["seconds"] for k, run in first["runs"].items() if k != 1} or {1: 0}
                best_k = min(batched, key=batched.get)
            n_params = first["n_params"]
            checked = len(naive["influence"])
            naive_error = max(abs(a - b) for a, b in zip(naive["influence"], exact["influence"]["before_step"]))
            rows.append((size, "naive", naive, f"max |naive - exact| {naive_error:.1e} over {checked} candidates"))
            rows.append((size, "exact", exact, ""))
            runs = {k: first["runs"][k] for k in dict.fromkeys([1, best_k])}
            for k, run in runs.items():
                note = ""
                if k != 1:
                    gap = max(
                        abs(a - b) for a, b in zip(run["influence"]["null_step"], runs[1]["influence"]["null_step"])
                    )
                    note = f"max |K={k} - K=1| {gap:.1e}"
                rows.append((size, f"first_order K={k}", {**run, "setup": first["setup"]}, note))
                for baseline in BASELINES:
                    stats = agreement(pd.Series(run["influence"][baseline]), pd.Series(exact["influence"][baseline]))
                    agreements.append((size, f"K={k}", baseline, *stats.values()))
            fastest = min(runs, key=lambda k: runs[k]["seconds"])
            ratios[size] = (fastest, exact["seconds"] / runs[fastest]["seconds"])
    print_report(rows, agreements, ratios, n_params, best_k)


def print_report(rows, agreements, ratios, n_params: int, best_k: int) -> None:
    seconds = {(size, method): result["seconds"] for size, method, result, _ in rows}
    print("\nCPU seconds of each method's process (wall seconds too: other jobs share this machine); ratios of CPU s")
    print(f"{'refs':>5}  {'method':<17} {'setup s':>8} {'s/candidate':>12} {'wall s/cand':>12} {'exact/this':>11} "
          f"{'naive/this':>11} {'peak RSS MB':>12}  note")  # fmt: skip
    for size, method, result, note in rows:
        this = result["seconds"]
        print(f"{size:>5}  {method:<17} {result['setup']:>8.1f} {this:>12.3f} {result['wall']:>12.3f} "
              f"{seconds[size, 'exact'] / this:>10.2f}x {seconds[size, 'naive'] / this:>10.2f}x "
              f"{result['peak_rss_mb']:>12.0f}  {note}")  # fmt: skip
    header = f"{'first_order':<12} {'baseline':<12} {'Spearman':>9} {'sign agreement':>15} {'max rel err':>12}"
    print(f"\n{'refs':>5}  {header}")
    for size, k, baseline, spearman, sign, error in agreements:
        print(f"{size:>5}  {k:<12} {baseline:<12} {spearman:>9.4f} {100 * sign:>14.1f}% {error:>12.2e}")
    gib = 4 * n_params / 2**30
    print(
        f"\nfirst_order memory: {n_params:,} parameters, {gib:.2f} GiB per float32 buffer; weights, AdamW M and V, "
        f"grad L_ref, scratch and the K=1 gradient: 6 buffers = {6 * gib:.2f} GiB; K={best_k} adds {best_k} "
        f"per-example gradients = {best_k * gib:.2f} GiB, twice while vmap assembles them. (exact: weights, "
        f"gradient, AdamW moments and their snapshot: 7 buffers = {7 * gib:.2f} GiB)"
    )
    growth = ", ".join(f"{ratio:.1f}x at {size} (K={k})" for size, (k, ratio) in ratios.items())
    largest = max(ratios)
    worst_spearman = min(a[3] for a in agreements)
    worst_sign = min(a[4] for a in agreements)
    speed_goal = GOALS["speed-up over exact at the largest reference set"]
    met = {
        f"first_order >= {speed_goal}x exact at {largest} references": ratios[largest][1] >= speed_goal,
        f"Spearman >= {GOALS['Spearman']} (worst {worst_spearman:.4f})": worst_spearman >= GOALS["Spearman"],
        f"sign agreement >= {GOALS['sign agreement']:.0%} (worst {worst_sign:.1%})": worst_sign
        >= GOALS["sign agreement"],
    }
    print(f"speed-up of first_order (its faster K) over exact by reference-set size: {growth}")
    for goal, ok in met.items():
        print(f"goal {goal}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
