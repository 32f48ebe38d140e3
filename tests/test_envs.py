"""The conda env of cluster runs must install exactly what the lock file pins (no conda channel here)."""

import yaml

from tests.conftest import ROOT


def lock_pins() -> list[str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def test_conda_env_pins_equal_lock():
    env = yaml.safe_load((ROOT / "envs/montessori.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == lock_pins()
    assert "python=3.11" in env["dependencies"]


def test_lock_pins_everything_exactly():
    for line in lock_pins():
        assert "==" in line, line
    names = [line.split("==")[0].lower() for line in lock_pins()]
    assert len(names) == len(set(names))
    # CUDA builds that break `import vllm` on CPU (DESIGN.md §3) must not come back with a re-lock.
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(names)
