# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; override for a GPU build (pip arguments, not quoted: an index may follow), e.g.
# `make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rcan demo --out demo

test: $(STAMP)
	$(VENV)/bin/ruff check rcan tests benchmarks examples
	$(PY) -m pytest -n 2 -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check rcan tests benchmarks examples

bench: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements-peer.txt
	$(PY) benchmarks/bench_env.py
	$(PY) benchmarks/bench_pairs_core.py
	$(PY) benchmarks/bench_generator.py
	$(PY) benchmarks/bench_qtopt.py

clean:
	rm -rf $(VENV) demo .pytest_cache
