"""benchmarks/gpu_check.py (`make gpu-check`) run for real at a tiny size on the CPU, as on a bare CUDA image."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# Runs the check and records, for every import made directly by montessori's modules or the script, the imported
# top-level package: a bare CUDA image has torch, transformers (with numpy and tqdm) and pandas/pyarrow only.
SPY = """
import importlib.abc, json, runpy, sys, traceback
OURS = (sys.argv[1] + "/montessori/", sys.argv[1] + "/benchmarks/")
seen = set()
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
        if frames and frames[-1].filename.startswith(OURS):
            seen.add(name.split(".")[0])
        return None
sys.meta_path.insert(0, Spy())
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    ours = sorted(m.__file__ for n, m in list(sys.modules.items()) if n.startswith("montessori"))
    print("IMPORTED " + json.dumps({"seen": sorted(seen), "modules": ours}))
"""
ALLOWED = {"torch", "transformers", "pandas", "pyarrow", "numpy", "tqdm", "montessori"}


def test_gpu_check_runs_on_cpu_and_prints_its_fields():
    args = ["--device", "cpu", "--size", "tiny", "--candidates", "2", "--references", "2", "--cpu-candidates", "2"]
    args += ["--warmup-steps", "2", "--max-length", "128"]
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    result = subprocess.run(
        [sys.executable, "-c", SPY, str(ROOT), script, *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^gpu_check: cpu \(CPU\), torch \S+, tiny shape, random weights, 6,587,008 parameters", out, re.M)
    assert re.search(r"^warm-up: 2 steps in [0-9.]+ s, final loss [0-9.]+$", out, re.M)
    assert re.search(
        r"^influence on cpu: 2 candidates x 2 references, engine start [0-9.]+ s, [0-9.]+ s per", out, re.M
    )
    assert "peak GPU memory (influence engine): n/a (no GPU)" in out
    match = re.search(r"^agreement cpu vs cpu: .* max abs diff (\S+), max rel diff (\S+) \(largest", out, re.M)
    assert match and float(match.group(1)) < 1e-9  # the same device twice: only padding differs (batch 8 vs 1)
    assert re.search(r"^total: [0-9.]+ s$", out, re.M)
    imported = json.loads(out.rsplit("IMPORTED ", 1)[1])
    # The spy misses a package torch or transformers imported first (here they import optional ones such as
    # accelerate when installed), so every module-level import of the montessori modules it loaded counts too.
    module_level = {root for path in imported["modules"] for root in _module_level_imports(path)}
    assert module_level >= {"torch", "transformers", "pandas"}  # the modules were read
    assert (set(imported["seen"]) | module_level) - ALLOWED - set(sys.stdlib_module_names) == set()


def _module_level_imports(path: str) -> set[str]:
    """Top-level packages a module imports when it is imported (function bodies import lazily: not counted)."""
    roots, pending = set(), list(ast.parse(Path(path).read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            roots.add(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return roots


def test_gpu_check_refuses_cuda_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "no CUDA device visible; run with --device cpu" in result.stderr
