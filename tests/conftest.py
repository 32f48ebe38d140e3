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
