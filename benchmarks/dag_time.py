"""How long Snakemake takes to build the DAG and say what it would do, and which heavy libraries that imports.

    python benchmarks/dag_time.py [--repeat 3] [-- SNAKEMAKE ARGS...]

Run it on a finished `make run` to time the no-op (`Nothing to be done`). Building the DAG must import none of
torch, transformers, vllm or duckdb: the rules read config, paths and small files only (rules/common.smk).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# pandas is not here: Snakemake imports it itself (snakemake-executor-plugin-slurm's efficiency report).
HEAVY = ("torch", "transformers", "vllm", "duckdb")


def heavy_imports(args: list[str]) -> list[str]:
    """The HEAVY packages a dry run imports, from Python's own import log (-X importtime)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--quiet", *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    return sorted(name for name in HEAVY if name in imported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("snakemake_args", nargs="*", help="extra snakemake arguments (after --)")
    args = parser.parse_args()
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--quiet", *args.snakemake_args],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        seconds.append(time.perf_counter() - start)
    runs = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"snakemake -n: median {statistics.median(seconds):.2f} s over {args.repeat} runs ({runs})")
    heavy = heavy_imports(args.snakemake_args)
    print(f"heavy libraries imported while building the DAG: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
