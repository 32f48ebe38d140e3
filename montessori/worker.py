"""One rank of a multi-process job: `python -m montessori.worker STAGE ARGUMENTS.json`, started by torchrun.

montessori.launch.run_stage starts it; torchrun has set RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous, and the
stage's function (which sets up torch.distributed itself) reads them. Rank 0's return value goes back to run_stage
as RESULT_FILE beside the arguments file (JSON), so a G-process stage returns what its one-process run returns.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Stage name -> "module:function". A "module:function" not listed here is accepted too (the tests' probes).
STAGES: dict[str, str] = {
    "warm_up": "montessori.warm_up:warm_up",
    "influence_shard": "montessori.influence_modes:run_shard",
    "dpo": "montessori.dpo:train_teacher",
    "sft": "montessori.sft:train_student",
}
RESULT_FILE = "result.json"


def resolve(stage: str) -> Callable[..., Any]:
    target = STAGES.get(stage, stage)
    module, _, function = target.partition(":")
    if not function:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)} (or MODULE:FUNCTION)")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str]) -> None:
    # torchrun's error summary then carries the failed rank's own traceback, which the job's error shows.
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_run)(*argv)


def _run(stage: str, arguments_file: str) -> None:
    # The library's log lines (montessori.*) reach the job's log through torchrun, as in a one-process job.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    with open(arguments_file, encoding="utf-8") as f:
        arguments = json.load(f)
    result = resolve(stage)(**arguments)
    if result is not None and int(os.environ.get("RANK", "0")) == 0:
        result_file = Path(arguments_file).with_name(RESULT_FILE)
        partial = result_file.with_suffix(".partial")
        partial.write_text(json.dumps(result), encoding="utf-8")
        partial.replace(result_file)


if __name__ == "__main__":
    main(sys.argv[1:])
