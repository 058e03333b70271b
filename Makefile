# The README's commands. Everything installs into .venv from the package index.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup kafka-jars test test-unit lint demo bench soak clean

setup: $(STAMP) kafka-jars

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Apache Kafka's jars from Maven Central into ~/.cache/cdc (CDC_KAFKA_CACHE), once, so that
# tests do not pay for them. Without Java or Maven it says why and passes: those tests skip.
kafka-jars: $(STAMP)
	$(BIN)/python -m cdc.devservers prepare-kafka

# pytest exits 5 when it collected nothing: that is a failure here
test: setup
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests collected" >&2; exit 1; fi; exit $$rc

# the tests that need no Postgres and no broker (tests/fix_servers.py marks the others `servers`)
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not servers"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-unit: no tests collected" >&2; exit 1; fi; exit $$rc

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
