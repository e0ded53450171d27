# One target per thing CI does, so a person runs exactly what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv run demo test lint lint-python typecheck format pytest pytest-live fuzz bench bench-rush bench-schedules bench-mail outage loadtest clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the app and dev tools

run: venv  ## start the whole service locally (Ctrl-C stops it)
	$(VENV)/bin/exporter dev run

demo: venv  ## one export end to end on the local stack; last line is a JSON summary
	$(VENV)/bin/exporter dev demo

lint: venv lint-deploy lint-python  ## ruff (lint + format check), plus image, chart and infra linters

lint-python: venv
	$(VENV)/bin/ruff check src tests docs bench
	$(VENV)/bin/ruff format --check src tests docs bench

typecheck: venv  ## mypy --strict
	$(VENV)/bin/mypy

# pytest itself runs one worker per core (-n auto in setup.cfg); see README "Development".
pytest: venv deploy-tools  ## the test suite (starts DynamoDB Local and an SMTP sink itself)
	$(VENV)/bin/pytest

# All of it at once: ruff, mypy and the deployment linters take ~20 s of CPU, which fits in
# the time pytest's workers spend waiting on servers, subprocesses and sleeps instead of
# adding to it. The venv and the deployment tools are installed first (one pip at a time).
# -O target prints each linter's output in one piece; pytest runs in a sub-make, whose output
# make passes through as it comes, so a CI log shows the suite's progress live. A failing
# check does not stop the others (--keep-going): every one reports.
TEST_JOBS ?= 6
test: venv deploy-tools  ## everything CI runs: lint, typecheck and pytest, in parallel
	$(MAKE) --no-print-directory --keep-going -j$(TEST_JOBS) -Otarget lint typecheck pytest-live

pytest-live:
	$(MAKE) --no-print-directory --output-sync=none pytest

bench: venv  ## export engine vs psql \copy (1M, 100k, 10k rows; medians); see docs/benchmarks.md
	$(PY) -m bench.export

# Full size by default (1,000 + 10 users, three rounds; ~7 min on 2 vCPU, ~9 with seeding); sizes
# as flags, e.g. make bench-rush RUSH_ARGS="--small-users 50 --large-users 2 --large-rows 50000".
RUSH_ARGS ?=
bench-rush: venv  ## the morning-of-the-1st burst, routing off/on/without large users; see docs/benchmarks.md
	$(PY) -m bench.rush $(RUSH_ARGS)

bench-schedules: venv  ## 10,000 schedules due one day: starts per half hour of the window (~5 min)
	$(PY) -m bench.schedules

bench-mail: venv  ## CPU per export email (build, flatten, wire) against the EmailMessage way (~20 s)
	$(PY) -m bench.mail_cost

fuzz: venv  ## only the Schemathesis run against a live API (pytest runs it too)
	$(VENV)/bin/pytest tests/test_fuzz.py

outage: venv  ## a 3-minute mail outage at the shipped retry defaults (real processes; ~4 min)
	$(VENV)/bin/pytest -n 0 -s -m real_outage tests/faults/test_outages.py

loadtest: venv  ## bounded load on a local stack (loopback, ~6 min); see docs/benchmarks.md
	$(PY) -m bench.loadtest

format: venv
	$(VENV)/bin/ruff format src tests docs bench
	$(VENV)/bin/ruff check --fix src tests docs bench

include mk/deploy.mk

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
