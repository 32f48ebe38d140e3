"""montessori.launch: G processes under torchrun over gloo on this CPU, their output in the job's log."""

import json
import os

import pytest

from montessori.launch import LaunchError, job_processes, rank_environment, run_stage, torchrun_command


def probe(out_dir: str, fail_rank: int = -1) -> None:
    """A stage for the tests: every rank all-reduces its rank over gloo and writes what it saw."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    print(f"probe rank {rank} of {world}", flush=True)
    if rank == fail_rank:
        raise RuntimeError(f"rank {rank} was told to fail")
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world": world, "sum": total.item(), "threads": os.environ["OMP_NUM_THREADS"]}, f)
    dist.destroy_process_group()


def test_processes_come_from_the_gpu_or_cpu_processes_resource():
    assert job_processes({"gpu": 4, "cpu_processes": 2}, cuda_available=True) == 4
    assert job_processes({"gpu": 4, "cpu_processes": 2}, cuda_available=False) == 2
    assert job_processes({"gpu": 1}, cuda_available=False) == 1
    assert job_processes({"gpu": 0}, cuda_available=True) == 1
    with pytest.raises(ValueError, match="resource cpu_processes='two'"):
        job_processes({"cpu_processes": "two"}, cuda_available=False)


def test_the_command_is_torchrun_on_one_node():
    command = torchrun_command("warm_up", "/tmp/args.json", 8)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=8" in command and command[-3:] == ["montessori.worker", "warm_up", "/tmp/args.json"]
    env = rank_environment(4, threads=8, cuda_available=False)
    assert env["OMP_NUM_THREADS"] == "2" and env["ACCELERATE_USE_CPU"] == "true"
    # On GPUs accelerate picks its distributed path itself.
    gpu_env = rank_environment(4, threads=8, cuda_available=True)
    assert gpu_env.get("ACCELERATE_USE_CPU") == os.environ.get("ACCELERATE_USE_CPU")


def test_two_processes_over_gloo_log_every_rank(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("the job's own first line\n")
    assert (
        run_stage("tests.test_launch:probe", {"out_dir": str(tmp_path)}, processes=2, threads=2, log_path=log) is None
    )
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen == [{"world": 2, "sum": 1.0, "threads": "1"}] * 2
    text = log.read_text()
    assert text.startswith("the job's own first line\n")
    assert "probe rank 0 of 2" in text and "probe rank 1 of 2" in text


def test_one_process_runs_in_the_job_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29591")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_stage("tests.test_launch:probe", {"out_dir": str(tmp_path)}, processes=1)
    assert json.loads((tmp_path / "rank0.json").read_text())["world"] == 1


def test_a_failing_rank_fails_the_job_with_its_output(tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(LaunchError, match=r"(?s)in 2 processes failed.*rank 1 was told to fail"):
        run_stage("tests.test_launch:probe", {"out_dir": str(tmp_path), "fail_rank": 1}, 2, log_path=log)


def rank_answer(value: int) -> dict:
    """A stage that returns something: each rank its own rank, so the test sees whose answer came back."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    answer = {"rank": dist.get_rank(), "value": value * dist.get_world_size()}
    dist.destroy_process_group()
    return answer


def test_a_multi_process_stage_returns_rank_zeros_result(tmp_path):
    assert run_stage("tests.test_launch:rank_answer", {"value": 3}, processes=2, log_path=tmp_path / "log") == {
        "rank": 0,
        "value": 6,
    }
