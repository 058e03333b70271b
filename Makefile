# The README's commands. Everything installs into .venv from the package index.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup kafka-jars test test-unit test-floors lint demo bench soak clean

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

# The lowest versions pyproject.toml allows (python -m tests.floors pins each >= floor) in a venv of
# their own: the tests that need no server, then the clients against the servers of .venv.
FLOORS := .venv-floors
FLOOR_SERVER_TESTS := tests/test_smoke.py tests/test_kafka.py tests/test_connector.py tests/test_consume.py tests/test_cli.py \
    tests/test_metrics.py
test-floors: $(STAMP)
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m tests.floors > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install --quiet -c $(FLOORS)/constraints.txt -e '.[fast]' pytest hypothesis pyyaml
	$(FLOORS)/bin/python -m pip list | grep -i -E '^(psycopg|fastavro|kafka-python|crc32c|orjson|typer|rich|prometheus.client|confluent-kafka) '
	$(FLOORS)/bin/python -m pytest -p no:cacheprovider -m "not servers"
	CDC_TANSU_BIN="$$($(BIN)/python -c 'from cdc.devservers import tansu_binary; print(tansu_binary())')" \
	CDC_TEST_PG_BIN="$$($(BIN)/python -c 'from cdc.devservers import find_pg_installs; print(find_pg_installs()[0].bin_dir)')" \
	$(FLOORS)/bin/python -m pytest -p no:cacheprovider $(FLOOR_SERVER_TESTS)

lint: setup
	$(BIN)/ruff check cdc tests bench examples
	$(BIN)/ruff format --check cdc tests bench examples
	$(BIN)/mypy

demo: setup
	$(BIN)/python -m cdc.demo

bench: setup
	$(BIN)/python -m bench

soak: setup
	$(BIN)/python -m tests.chaos.soak

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
