# `make demo` and `make test` each do all set-up on a fresh machine (a virtual environment in
# .venv with torch, then this package and its test tools), then run.
#   TORCH='torch==2.13.0' is the CPU wheel here; on a GPU machine install your CUDA build of torch
#   into .venv first, or set TORCH to the requirement your index serves.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tlc demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python bench/train_overhead.py
