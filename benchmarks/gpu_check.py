"""GPU check: the student warm-up and exact local influence on an accelerator, and their agreement with the CPU.

Needs only torch, transformers, pandas and pyarrow (what a bare CUDA image has; no vLLM, TRL, Snakemake, duckdb
or downloads): a Llama of SmolLM2-135M's shape (data/model_configs/, the vendored tokenizer) with random
weights is built on the device, takes a few warm-up steps (montessori.warm_up), and the influence engine
(montessori.influence.InfluenceEngine, exact) scores N candidates against M references there; a CPU-only child
process (CUDA hidden) scores the first few candidates from the same warm student. Prints seconds per candidate,
peak GPU memory and the CPU-vs-device agreement of the influences.

    python benchmarks/gpu_check.py                      # make gpu-check: cuda, SmolLM2-135M shape, 8 x 32
    python benchmarks/gpu_check.py --device cpu --size tiny --candidates 3 --references 4   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# On a bare CUDA image montessori is not installed: import it from this checkout.
sys.path.insert(0, str(ROOT))

SMOLLM2_CONFIG = ROOT / "data" / "model_configs" / "HuggingFaceTB" / "SmolLM2-135M-Instruct" / "config.json"
SEEDS = ROOT / "data" / "seed_pool" / "alpaca_gpt4_en_demo_999.json"
REFERENCES = ROOT / "data" / "montessori_instruct" / "reference_dataset_alpaca_eval_gpt4_1106_preview.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--size", choices=["smollm2", "tiny"], default="smollm2",
        help="smollm2: SmolLM2-135M's shape (134.5M parameters); tiny: tiny-random-llama's (6.6M), for smoke runs",
    )  # fmt: skip
    parser.add_argument("--candidates", type=int, default=8, help="candidates scored on --device")
    parser.add_argument("--references", type=int, default=32, help="reference examples of the influence loss")
    parser.add_argument("--cpu-candidates", type=int, default=2, help="of those, scored again on the CPU")
    parser.add_argument("--warmup-steps", type=int, default=4, help="warm-up steps at batch size 1")
    parser.add_argument("--max-length", type=int, default=512, help="token limit of every example")
    parser.add_argument("--reference-batch-size", type=int, default=8, help="on --device (the CPU run uses 1)")
    parser.add_argument("--lr", type=float, default=5e-6, help="warm-up and influence step (the paper's)")
    # Internal: the CPU child scores candidates of an existing warm student and writes them as JSON.
    parser.add_argument("--score-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.cpu_candidates <= args.candidates or args.candidates < 1 or args.references < 1:
        parser.error("need candidates >= 1, references >= 1 and 0 <= cpu-candidates <= candidates")
    return args


def examples(n: int, offset: int = 0):
    """Alpaca-GPT4 seed records as (instruction, response): real lengths for warm-up data and candidates."""
    import pandas as pd

    from montessori.io import read_records

    records = read_records(SEEDS, required=("instruction", "output"))[offset : offset + n]
    rows = [(" ".join(filter(None, [r["instruction"], r.get("input", "")])), r["output"]) for r in records]
    return pd.DataFrame(rows, columns=["instruction", "response"])


def candidates(n: int):
    frame = examples(n, offset=100)
    frame.insert(0, "prompt_id", [f"p{i // 4:03d}" for i in range(n)])
    frame.insert(0, "candidate_id", [f"c{i:03d}" for i in range(n)])
    frame["verdict"] = "ok"
    return frame


def references(n: int):
    import pandas as pd

    from montessori.io import read_records

    frame = pd.DataFrame(read_records(REFERENCES, required=("instruction", "response"))[:n])
    frame.insert(0, "reference_id", [f"r{i:03d}" for i in range(len(frame))])
    return frame


def build_random_model(size: str, device, out_dir: Path) -> int:
    """A seeded random Llama built on `device`, saved with the vendored SmolLM2 tokenizer; its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from montessori.models import TOKENIZER_DIR, tiny_llama_config

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    if size == "tiny":
        config = tiny_llama_config(tokenizer)
    else:
        config = LlamaConfig.from_dict(json.loads(SMOLLM2_CONFIG.read_text()))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def score(warm_dir: Path, args: argparse.Namespace, n: int, reference_batch_size: int) -> dict:
    """Exact influence of the first `n` candidates on this process's device, with timings."""
    import torch

    from montessori.influence import InfluenceEngine

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine = InfluenceEngine(
        warm_dir / "model", warm_dir / "optimizer.pt", references(args.references), args.max_length,
        reference_batch_size,
    )  # fmt: skip
    ready = time.perf_counter()
    scores = engine.score(candidates(n), "before_step")
    if cuda:
        torch.cuda.synchronize()
    done = time.perf_counter()
    return {
        "device": str(engine.model.device),
        "engine_seconds": ready - started,
        "seconds_per_candidate": (done - ready) / n,
        "loss_before": engine.loss_before,
        "influence": scores["influence_before_step"].tolist(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


def cpu_scores(warm_dir: Path, args: argparse.Namespace) -> dict:
    """The CPU's scores, from a child process that cannot see any GPU (a CPU-only node, exactly)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-cpu-") as scratch:
        out = Path(scratch) / "scores.json"
        command = [
            sys.executable, __file__, "--device", "cpu", "--score-only", str(warm_dir), "--json", str(out),
            "--candidates", str(args.cpu_candidates), "--references", str(args.references),
            "--cpu-candidates", str(args.cpu_candidates), "--max-length", str(args.max_length),
        ]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        return json.loads(out.read_text())


def agreement(device: list[float], cpu: list[float]) -> tuple[float, float]:
    """Largest absolute difference, and largest difference relative to the CPU's influence."""
    diffs = [abs(a - b) for a, b in zip(device, cpu)]
    relative = [d / abs(b) if b else float("inf") if d else 0.0 for d, b in zip(diffs, cpu)]
    return max(diffs, default=0.0), max(relative, default=0.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: every montessori call picks the CPU
    import torch

    if args.score_only:
        Path(args.json).write_text(json.dumps(score(args.score_only, args, args.candidates, reference_batch_size=1)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; run with --device cpu for a CPU-only check", file=sys.stderr)
        return 1
    from montessori.warm_up import warm_up

    started = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        scratch = Path(scratch)
        n_params = build_random_model(args.size, torch.device(args.device), scratch / "random")
        print(
            f"gpu_check: {args.device} ({name}), torch {torch.__version__}, {args.size} shape, random weights, "
            f"{n_params:,} parameters, max_length {args.max_length}",
            flush=True,
        )
        warm = warm_up(
            scratch / "random", examples(args.warmup_steps), scratch / "warm", lr=args.lr, batch_size=1,
            max_length=args.max_length,
        )  # fmt: skip
        print(f"warm-up: {warm['steps']} steps in {warm['seconds']:.2f} s, final loss {warm['final_loss']:.4f}")
        result = score(scratch / "warm", args, args.candidates, args.reference_batch_size)
        print(
            f"influence on {result['device']}: {args.candidates} candidates x {args.references} references, "
            f"engine start {result['engine_seconds']:.2f} s, {result['seconds_per_candidate']:.3f} s per candidate"
        )
        peak = result["peak_gpu_bytes"]
        label = "peak GPU memory (influence engine)"
        print(f"{label}: {peak / 2**30:.2f} GiB" if peak is not None else f"{label}: n/a (no GPU)")
        if args.cpu_candidates:
            cpu = cpu_scores(scratch / "warm", args)
            print(
                f"influence on cpu: {args.cpu_candidates} candidates, engine start {cpu['engine_seconds']:.2f} s, "
                f"{cpu['seconds_per_candidate']:.3f} s per candidate"
            )
            absolute, relative = agreement(result["influence"][: args.cpu_candidates], cpu["influence"])
            print(
                f"agreement cpu vs {args.device}: loss_before {result['loss_before']:.8f} vs "
                f"{cpu['loss_before']:.8f}; influence max abs diff {absolute:.3e}, max rel diff {relative:.3e} "
                f"(largest |influence| {max(abs(v) for v in cpu['influence']):.3e})"
            )
    print(f"total: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
