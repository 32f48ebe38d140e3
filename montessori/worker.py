"""One rank of a multi-process job: `python -m montessori.worker STAGE ARGUMENTS.json`, started by torchrun.

montessori.launch.run_stage starts it; torchrun has set RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous, and the
stage's function (which sets up torch.distributed itself) reads them.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

# Stage name -> "module:function". A "module:function" not listed here is accepted too (the tests' probes).
STAGES: dict[str, str] = {
    "warm_up": "montessori.student:warm_up",
}


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
    with open(arguments_file, encoding="utf-8") as f:
        arguments = json.load(f)
    resolve(stage)(**arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
