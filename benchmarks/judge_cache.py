"""Benchmark: the judgment cache (montessori/judges/cache.py) at the size of a paper-scale evaluation.

Builds a cache directory of N judgments spread over F job files, each judgment shaped as the Judge stores an
AlpacaEval one (the annotator prompt with two answers, a one-token answer, 5 top logprobs), then prints what a
job pays: seconds per durable append (write + fsync), seconds to open (index every file), seconds to look up
every key, and the index's memory.

    python benchmarks/judge_cache.py [--judgments N] [--files F] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from unittest import mock

from montessori.judges.cache import RecordCache

PROMPT = (Path(__file__).resolve().parent.parent / "data" / "alpaca_eval" / "alpaca_eval_clf.txt").read_text()


def judgment(i: int) -> tuple[str, dict]:
    answer = f"An answer of a few hundred words to instruction {i}. " * 20
    request = {
        "judge": "openai:gpt-4-1106-preview@https://api.openai.com/v1",
        "messages": [{"role": "user", "content": PROMPT + answer + answer[::-1]}],
        "max_tokens": 1,
        "temperature": 0.0,
        "top_logprobs": 5,
    }
    key = hashlib.sha256(str(request).encode()).hexdigest()
    record = {"judge": request["judge"], "request": request, "text": "m", "top_logprobs": [[["m", -0.1]] * 5]}
    return key, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", type=int, default=30_000)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="where to build it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp) / "judge_cache"
        durable = RecordCache(directory, writer="durable")
        start = time.perf_counter()
        for i in range(200):
            durable.put(*judgment(i))
        per_put = (time.perf_counter() - start) / 200
        durable.close()

        keys = []
        # Building the rest without fsync: the benchmark measures reading, and 30k fsyncs would take minutes.
        with mock.patch.object(os, "fsync", lambda fd: None):
            for f in range(args.files):
                job = RecordCache(directory, writer=f"job{f}")
                for i in range(200 + f, args.judgments, args.files):
                    key, record = judgment(i)
                    job.put(key, record)
                    keys.append(key)
                job.close()
        size = sum(p.stat().st_size for p in directory.iterdir())

        start = time.perf_counter()
        cache = RecordCache(directory, writer="reader")
        opened = time.perf_counter() - start
        tracemalloc.start()
        second = RecordCache(directory, writer="reader")  # what an open cache keeps: the index alone
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(second) == len(cache)
        start = time.perf_counter()
        found = cache.get_many(keys)
        looked_up = time.perf_counter() - start
        assert len(found) == len(keys) and cache.problems == []

    print(f"cache: {len(cache)} judgments in {args.files + 1} files, {size / 2**20:.0f} MiB")
    print(f"durable append (write + fsync): {per_put * 1000:.2f} ms per judgment")
    print(f"open (index every file): {opened:.2f} s; index memory {memory / 2**20:.1f} MiB")
    print(f"look up all {len(keys)} keys: {looked_up:.2f} s ({looked_up / len(keys) * 1e6:.0f} us per judgment)")


if __name__ == "__main__":
    main()
