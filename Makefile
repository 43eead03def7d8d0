# simkv — the two commands of the quick start are `make run` and `make test`.
# Both create the virtualenv (.venv) on first use and install everything they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LMCACHE_VERSION := 0.5.6
TORCH_VERSION   := 2.13.0

SCENARIO ?= scenarios/default.yaml
TRACE    ?= traces/small.parquet
OUT      ?= runs/$(basename $(notdir $(SCENARIO)))

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml replay/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# The engine (replay/): torch pinned to the CPU build. pip's find-links holds the local
	# torch-$(TORCH_VERSION)+cpu wheel, which sorts above the registry's CUDA build of the same
	# version, so no CUDA wheels are pulled; the pin also keeps a later resolve from moving it.
	$(BIN)/python -m pip install -q -e replay 'torch==$(TORCH_VERSION)'
	# LMCache without its dependencies (they name CUDA packages): the simulator's parity
	# reference, and the engine's standalone manager (its import-time needs come with replay/).
	$(BIN)/python -m pip install -q --no-deps 'lmcache==$(LMCACHE_VERSION)'
	$(BIN)/python -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: ' + torch.__version__"
	touch $(STAMP)

install: $(STAMP)

## The main job: simulate the default scenario on the bundled trace and print the summary.
run: $(STAMP)
	$(BIN)/simkv run $(SCENARIO) --trace $(TRACE) -o $(OUT)

## The test suite (what CI runs): unit and property tests, the golden-file regression, lint.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto
	$(BIN)/simkv regress
	$(BIN)/ruff check simkv tests bench replay

lint: $(STAMP)
	$(BIN)/ruff check simkv tests bench replay

bench: $(STAMP)
	$(BIN)/python bench/bench_import.py
	$(BIN)/python bench/bench_sim.py
	$(BIN)/python bench/bench_curve.py
	$(BIN)/python bench/bench_sweep.py
	PYTHONHASHSEED=0 $(BIN)/python bench/bench_engine.py --server

clean:
	rm -rf $(VENV) runs
