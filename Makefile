# The two commands of the README. Each sets itself up on a fresh machine:
# creates .venv if missing and (re)installs the package when pyproject.toml
# is newer than the last install. The demo installs what it needs; the tests
# add the dev extra (PyTorch references, ruff, and libtpu for the TPU
# compilation tests, which a CPU-only demo should not load).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
WORKDIR ?= runs/demo
DEMO_CONFIG ?= configs/synthetic.py

.PHONY: demo test lint format install clean-demo

install: $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

# Trains and evaluates on the embedded synthetic dataset. Interrupt it and run
# it again: it resumes from the latest checkpoint in $(WORKDIR).
demo: $(STAMP)
	$(PY) -m mlar_jax.main --config $(DEMO_CONFIG) --workdir $(WORKDIR)

# One worker per core; a test file stays on one worker, so its module-scoped
# fixtures (compiled steps, trained workdirs) are built once.
test: $(DEV_STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests

# The formatter's and linter's verdict (configuration in pyproject.toml);
# `make format` applies both.
lint: $(DEV_STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(DEV_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-demo:
	rm -rf $(WORKDIR)
