# crmlab -- `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
JOBS ?= 2
SCALE ?= demo
# The tested set of every package (test and lab extras included), for Python 3.11-3.13
# on Linux, macOS and Windows, with hashes. `make lock` writes it from pyproject.toml.
LOCK := requirements/lock.txt
PIP_VERSION := 26.3
UV_VERSION := 0.13.10
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
LOCK_ARGS := pyproject.toml --extra test --extra lab --universal --generate-hashes \
             --custom-compile-command "make lock" -o $(LOCK)
FAST := not slow and not postgres and not browser
# another Python for `make test-python` / `make upstream`
PY ?= 3.12
PYBIN ?= python$(PY)
# the upstream smoke's tests stop after this long (it only warns, and CI has 90 minutes)
UPSTREAM_TEST_MINUTES ?= 20

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast test-python upstream lab lock lock-upgrade bench bench-demo bench-table clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-13s %s\n", $$1, $$2}'

# Install exactly the lock (hash-checked), then crmlab itself without resolving anything;
# `pip check` fails if pyproject.toml asks for something the lock lacks (run `make lock`).
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	$(BIN)/python -m ipykernel install --sys-prefix --name crmlab --display-name "crmlab (Python 3)" >/dev/null
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the locked packages and crmlab (quick when nothing changed)

demo: setup ## generate the demo world, run all five reports, build the index
	$(BIN)/crmlab generate --scenario demo >/dev/null
	$(BIN)/crmlab run-all --jobs $(JOBS) >/dev/null
	$(BIN)/crmlab index >/dev/null
	@echo "Open $(CURDIR)/reports/index.html"

test: setup ## run the whole test suite (PostgreSQL and Chromium tests included)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q

test-fast: setup ## the suite without slow accuracy, PostgreSQL and browser tests
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q -m "$(FAST)"

test-python: ## the fast tests on another Python, same lock, own venv: make test-python PY=3.13 [PYBIN=/path/python3.13]
	@test -x .venv-py$(PY)/bin/python || $(PYBIN) -m venv .venv-py$(PY)
	@if [ ! -f .venv-py$(PY)/.setup-stamp ] || [ $(LOCK) -nt .venv-py$(PY)/.setup-stamp ] \
	     || [ pyproject.toml -nt .venv-py$(PY)/.setup-stamp ]; then \
	  set -e; P=.venv-py$(PY)/bin/python; \
	  $$P -m pip install -q pip==$(PIP_VERSION); \
	  $$P -m pip install -q --require-hashes -r $(LOCK); \
	  $$P -m pip install -q --no-deps -e .; \
	  $$P -m pip check; touch .venv-py$(PY)/.setup-stamp; fi
	.venv-py$(PY)/bin/python -m pytest -n $(JOBS) --dist loadgroup -q -p no:cacheprovider -m "$(FAST)"

upstream: ## warning-level smoke on the NEWEST releases pyproject.toml allows (fresh .venv-upstream, no lock)
	rm -rf .venv-upstream
	$(PYTHON) -m venv .venv-upstream
	.venv-upstream/bin/python -m pip install -q --upgrade pip
	.venv-upstream/bin/python -m pip install -q -e ".[test,lab]"
	@.venv-upstream/bin/python requirements/compare.py $(LOCK) .venv-upstream/bin/python
	.venv-upstream/bin/crmlab generate --scenario small --out .venv-upstream/smoke/world >/dev/null
	.venv-upstream/bin/crmlab run-all --source .venv-upstream/smoke/world --jobs $(JOBS) \
	    --reports-dir .venv-upstream/smoke/reports
	.venv-upstream/bin/crmlab index --reports-dir .venv-upstream/smoke/reports >/dev/null
	@if .venv-upstream/bin/python requirements/compare.py $(LOCK) .venv-upstream/bin/python --status >/dev/null; then \
	  echo "the newest releases are the locked set, which the main suite tests: fast tests not repeated"; \
	else set -x; timeout -k 30 $(UPSTREAM_TEST_MINUTES)m .venv-upstream/bin/python -m pytest -n $(JOBS) \
	    --dist loadgroup -q -p no:cacheprovider -m "$(FAST)"; fi

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)

lock: $(UV) ## rewrite requirements/lock.txt from pyproject.toml, keeping every pin that still fits
	$(UV) pip compile $(LOCK_ARGS) >/dev/null

lock-upgrade: $(UV) ## move the lock to the newest releases pyproject.toml allows (PACKAGES="pandas duckdb" for some)
	$(UV) pip compile $(LOCK_ARGS) >/dev/null $(if $(PACKAGES),$(foreach p,$(PACKAGES),--upgrade-package $(p)),--upgrade)

lab: setup ## JupyterLab on notebooks/ with the project's kernel
	$(BIN)/jupyter lab --notebook-dir=notebooks

bench: setup ## benchmark at demo and large scale (1M customers / 20M orders); writes bench/BASELINE-*.json and the README table
	$(BIN)/python bench/run.py --scale demo --repeat 3 --baseline
	$(BIN)/python bench/run.py --scale large --baseline
	$(BIN)/python bench/readme_table.py

bench-demo: setup ## the benchmark at demo scale only (a few minutes); writes bench/BASELINE-demo.json and the README table
	$(BIN)/python bench/run.py --scale $(SCALE) --repeat 3 --baseline
	$(BIN)/python bench/readme_table.py

bench-table: ## rewrite the README's speed table from the committed bench/BASELINE-*.json
	$(PYTHON) bench/readme_table.py

clean: ## remove generated worlds, reports, bench results and caches (keeps the venvs)
	rm -rf reports synthetic/data bench/results .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
