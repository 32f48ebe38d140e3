from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

# A handful of short instruction/response pairs: enough for a student warm-up step in the tests.
TOY_EXAMPLES = pd.DataFrame(
    {
        "instruction": [
            "Name a primary colour.",
            "What is two plus two?",
            "Give a synonym for happy.",
            "Translate 'cat' into French.",
            "Name a planet.",
            "What is the opposite of hot?",
            "Spell the word house backwards.",
            "Name a fruit that is yellow.",
        ],
        "response": ["Red.", "Four.", "Joyful.", "Chat.", "Mars.", "Cold.", "esuoh", "A banana."],
    }
)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The deterministic tiny random Llama (SmolLM2 tokenizer); built once, reused across runs."""
    from montessori.models import build_tiny_llama

    path = ROOT / "resources" / "models" / "tiny-random-llama"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_base_model_dir() -> Path:
    """The tiny random Llama without a chat template, as a base model's tokenizer comes."""
    from montessori.models import build_tiny_llama

    path = ROOT / "resources" / "models" / "tiny-random-llama-base"
    if not (path / "config.json").exists():
        build_tiny_llama(path, chat_template=False)
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
