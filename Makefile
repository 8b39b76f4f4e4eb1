# tnrwatch: `make run` runs the whole system locally, `make test` runs the tests.
# Needs Python 3.11, Java 17 and Maven on the machine; everything else is fetched here.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DASHBOARD := services/projections/dashboard
DASHBOARD_STAMP := $(DASHBOARD)/vendor/.built

.PHONY: run test setup browser eval lint typecheck pytest stack-up stack-down stack-status bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The dashboard's charting library comes from npm at build time (never committed, no CDN).
$(DASHBOARD_STAMP): $(DASHBOARD)/package.json $(DASHBOARD)/package-lock.json $(DASHBOARD)/build.mjs
	npm --prefix $(DASHBOARD) ci --no-audit --no-fund --loglevel=error
	npm --prefix $(DASHBOARD) run build --silent
	@touch $@

setup: $(STAMP) $(DASHBOARD_STAMP)

# Debian's headless Chromium for the dashboard's browser test (Playwright drives it; it never
# downloads a browser of its own).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: setup
	$(BIN)/python deploy/local/run.py

test: setup browser
	bash deploy/local/with-stack.sh $(MAKE) --no-print-directory lint typecheck eval pytest

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy shared services cli benchmarks tests

pytest: setup
	TNR_TEST_INFRA=$${TNR_TEST_INFRA:-auto} $(BIN)/pytest -q $(PYTEST_ARGS)

stack-up:
	bash deploy/local/stack.sh up

stack-down:
	bash deploy/local/stack.sh down

stack-status:
	bash deploy/local/stack.sh status

# The Quix Streams peer of the classifier benchmark pins an older pydantic: its own venv.
BENCH_PEER := .cache/venv-bench
$(BENCH_PEER)/.installed: benchmarks/classifier_peer_requirements.txt
	@test -x $(BENCH_PEER)/bin/python || $(PYTHON) -m venv $(BENCH_PEER)
	$(BENCH_PEER)/bin/pip install --quiet -r benchmarks/classifier_peer_requirements.txt
	@touch $@

# `make bench` runs every benchmark; `make bench BENCH=intake_throughput` runs one.
bench: setup $(BENCH_PEER)/.installed
	TNR_BENCH_PEER_PYTHON=$(BENCH_PEER)/bin/python bash deploy/local/with-stack.sh $(BIN)/python -m benchmarks $(BENCH)

# The narrative classifier's quality gate: micro-F1 on the labelled sets.
eval: setup
	$(BIN)/tnrwatch eval tests/data/incidents.jsonl --min-f1 0.9
	$(BIN)/tnrwatch eval tests/data/classifier_hard_cases.jsonl --min-f1 0.9

clean:
	bash deploy/local/stack.sh clean || true
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
