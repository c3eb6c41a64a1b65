# crmlab -- `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
JOBS ?= 2
SCALE ?= demo

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lab bench bench-demo clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,lab]"
	$(BIN)/python -m ipykernel install --sys-prefix --name crmlab --display-name "crmlab (Python 3)" >/dev/null
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install crmlab with its test and lab extras (quick when nothing changed)

demo: setup ## generate the demo world, run all five reports, build the index
	$(BIN)/crmlab generate --scenario demo >/dev/null
	$(BIN)/crmlab run-all --jobs $(JOBS) >/dev/null
	$(BIN)/crmlab index >/dev/null
	@echo "Open $(CURDIR)/reports/index.html"

test: setup ## run the whole test suite (PostgreSQL and Chromium tests included)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q

test-fast: setup ## the suite without slow accuracy, PostgreSQL and browser tests
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q -m "not slow and not postgres and not browser"

lab: setup ## JupyterLab on notebooks/ with the project's kernel
	$(BIN)/jupyter lab --notebook-dir=notebooks

bench: setup ## benchmark at demo scale and 1M customers / 20M orders; prints a table, writes bench/results/*.json
	$(BIN)/python bench/run.py --scale demo --repeat 3
	$(BIN)/python bench/run.py --scale large

bench-demo: setup ## the benchmark at demo scale only (a few minutes)
	$(BIN)/python bench/run.py --scale $(SCALE) --repeat 3

clean: ## remove generated worlds, reports, bench results and caches (keeps .venv)
	rm -rf reports synthetic/data bench/results .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
