# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DEMO ?= $(CURDIR)/demo-home

.PHONY: demo test lint bench install dev clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

## Run the whole pipeline on scikit-learn's bundled digits (embedded default, no download).
demo: $(VENV)/.installed
	$(BIN)/latentsight demo --home $(HOME_DEMO)

## Run the test suite (creates .venv if needed, installs the dev extra) on two pytest-xdist
## workers, one test file each at a time: 12.5-19 min instead of 23 on 2 cores (README.md,
## "Development"). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

## Benchmarks on ../shared/datasets/neu-cls (skip when absent); results -> docs/benchmarks.md
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/limits.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/anomaly.py
	$(BIN)/python benchmarks/anomaly_models.py
	nice -n 5 $(BIN)/python benchmarks/index.py

$(VENV)/.installed-fuzz: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev,fuzz]"
	touch $@ $(VENV)/.installed $(VENV)/.installed-dev

## Fuzz the image decoder with atheris for FUZZ_SECONDS (by hand; not part of `make test`).
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.installed-fuzz
	$(BIN)/python fuzz/seed_corpus.py fuzz/corpus
	$(BIN)/python fuzz/fuzz_decode.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-rss_limit_mb=2048 fuzz/corpus

clean:
	rm -rf $(VENV) $(HOME_DEMO) .pytest_cache
