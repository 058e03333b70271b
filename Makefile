# The README's commands. Everything installs into .venv from the package index.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup kafka-jars peers test test-unit test-compiled test-floors compiled pure lint demo bench soak clean

setup: $(STAMP) kafka-jars peers

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Apache Kafka's jars from Maven Central into ~/.cache/cdc (CDC_KAFKA_CACHE), once, so that
# tests do not pay for them. Without Java or Maven it says why and passes: those tests skip.
kafka-jars: $(STAMP)
	$(BIN)/python -m cdc.devservers prepare-kafka

# The interoperability peers (Apicurio Registry, Debezium) into ~/.cache/cdc/peers, once; without
# Java or Maven it says why and passes: their tests skip.
peers: $(STAMP)
	$(BIN)/python -m tests.peers prepare

# pytest-xdist processes for `make test` and `make test-compiled`, each with its own servers (0: the
# tests run in pytest's own process). Most test time waits on servers and timeouts, so 2 halve the
# pure suite on 2 cores (26-32 -> 15 min; `make test` 36-43 -> 21.5 min, README Testing)
TEST_WORKERS ?= 2

# Both builds of the same source: every test on the pure one (what `pip install` gives without the
# compiled wheel), then `test-compiled`. pytest exits 5 when it collected nothing: a failure here.
test: setup
	$(MAKE) --no-print-directory pure
	$(BIN)/python -m pytest -n $(TEST_WORKERS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests collected" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	$(MAKE) --no-print-directory test-compiled

# The compiled build: the per-row modules (cdc.HOT_MODULES) as C extensions made by mypyc through
# the wheel's build hook (as black ships its wheels). The wheel lands in dist/; the extensions stay
# beside their sources, so this checkout (`make demo`, `make bench`) runs compiled until `make pure`.
# Needs a C compiler and Python's headers; without them it says so and fails.
compiled: $(STAMP)
	@$(BIN)/python -m tests.build_check
	HATCH_BUILD_HOOKS_ENABLE=1 $(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	@$(BIN)/python -c 'import cdc; print("cdc build:", cdc.build())'

pure:
	rm -f cdc/*.so cdc/*/*.so *__mypyc.*.so

# The compiled build against the tests that need no server, the chaos suite's faults (both
# producers) and the shaping paths of the writer (transforms, dead letters, row filters); `make pure`
# after, whatever the result. Without a C compiler it says why and passes.
# (not the at-least-once reference run of test_exactly_once: it checks the duplicates a fault makes)
COMPILED_TESTS := tests/chaos/test_faults.py --deselect "tests/chaos/test_faults.py::test_exactly_once[kafka-at-least-once]" \
	tests/test_dead_letters.py tests/test_shaping_transforms.py tests/test_shaping_tables.py
test-compiled: setup
	@if ! $(BIN)/python -m tests.build_check; then echo "make test-compiled: skipped, the compiled build cannot be made here (above)"; exit 0; fi; \
	$(MAKE) --no-print-directory compiled || exit 1; \
	CDC_EXPECT_BUILD=compiled $(BIN)/python -m pytest -n $(TEST_WORKERS) -p no:cacheprovider -m "not servers" tests; rc=$$?; \
	if [ $$rc -eq 0 ]; then CDC_EXPECT_BUILD=compiled $(BIN)/python -m pytest -n $(TEST_WORKERS) -p no:cacheprovider $(COMPILED_TESTS); rc=$$?; fi; \
	$(MAKE) --no-print-directory pure; exit $$rc

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

bench: setup compiled
	$(BIN)/python -m bench

soak: setup
	$(BIN)/python -m tests.chaos.soak

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
