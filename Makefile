# The two commands of the README. Each sets itself up on a fresh machine:
# creates .venv if missing and (re)installs the package when pyproject.toml
# is newer than the last install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
DEMO_CONFIG ?= configs/synthetic.py

.PHONY: demo test lint format install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Trains and evaluates on the embedded synthetic dataset. Interrupt it and run
# it again: it resumes from the latest checkpoint in $(WORKDIR).
demo: $(STAMP)
	$(PY) -m mlar_jax.main --config $(DEMO_CONFIG) --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The formatter's and linter's verdict (configuration in pyproject.toml);
# `make format` applies both.
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-demo:
	rm -rf $(WORKDIR)
