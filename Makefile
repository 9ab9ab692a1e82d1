# `make demo` and `make test` each do all set-up on a fresh machine (a virtual environment in
# .venv with torch and this package; the test tools for `make test`), then run.
#   TORCH='torch==2.13.0' is the CPU wheel here; on a GPU machine install your CUDA build of torch
#   into .venv first, or set TORCH to the requirement your index serves.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# --no-compile: pip would compile every installed module to bytecode, about half the set-up's CPU time
# (BENCHMARKS.md), most of it for modules tlc never imports. Python compiles what it imports on first
# use and keeps it in __pycache__, so these commands drop the variable that forbids keeping it.
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test bench gpu-check-dry-run

# torch and tlc in one pip call: one resolution of the dependencies, not two
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)" -e .
	touch $@

# The test tools in the same pip call as torch and tlc: one resolution and one build of tlc's editable
# wheel instead of two (52 -> 42 s of a cold `make test`'s set-up, BENCHMARKS.md). After `make demo` it
# only adds the test tools.
$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)" -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/tlc demo

# One pytest worker per core (pytest-xdist), each test file on one worker so that a file's shared
# fixtures (a trained sweep) are built once. Most tests wait on single-threaded trainer processes,
# so two workers on two cores halve the suite's wall time (BENCHMARKS.md, "Tests"). The files start in the order
# tests/conftest.py gives them (the slowest first); xdist would otherwise reorder them by their number of tests.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

bench: $(VENV)/.installed
	$(BIN)/python bench/train_overhead.py

gpu-check-dry-run: $(VENV)/.installed-test
	PYTHON=$(BIN)/python scripts/gpu_check.sh --dry-run
