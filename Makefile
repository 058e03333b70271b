# The README's commands. Everything installs into .venv from the package index.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# pytest exits 5 when it collected nothing: that is a failure here
test: setup
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests collected" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check cdc tests bench
	$(BIN)/ruff format --check cdc tests bench
	$(BIN)/mypy

demo: setup
	$(BIN)/python -m cdc.demo

bench: setup
	$(BIN)/python -m bench

soak: setup
	$(BIN)/python -m tests.chaos.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
