# Two commands on a fresh machine with Python 3.11: `make up` runs the system, `make test` tests it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo_models
PORT ?= 8080

.PHONY: up test bench lint loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.runtime

$(DEMO)/.built: $(VENV)/.runtime modelgate/demo.py
	$(BIN)/modelgate demo --out $(DEMO)
	touch $@

up: $(VENV)/.runtime $(DEMO)/.built
	$(BIN)/modelgate up --models $(DEMO) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/python -m pytest

bench: $(VENV)/.dev
	$(BIN)/python -m bench.run

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy modelgate gateway worker autoscaler

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
