# CustomerSource notifications. `make run` runs the whole system on embedded defaults;
# `make test` runs the test suite. Both create .venv and install everything on first use.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint smoke bench fuzz faults schemas catalogs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# BROKER=apache-kafka runs Apache Kafka itself instead of Tansu (a JDK 17+ and Maven on the first run).
BROKER ?= tansu

run: $(STAMP)
	$(BIN)/python -m ops.devstack --broker $(BROKER)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check shared services ops tests
	$(BIN)/mypy shared services ops tests

# The property tests that fuzz the envelope decoder, the message builder and hostile event content, with
# 5,000 examples each instead of the test run's 100 (several minutes).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/unit/test_envelope.py \
		tests/unit/test_message.py tests/handlers/test_hostile_content.py

# The fault scenarios at full scale, for each of the four sending services (about 50 minutes): SIGKILLed 20 times
# during 10,000 events, alone and as one of two replicas; the broker SIGKILLed and restarted during 10,000 events,
# and unreachable for 60 s mid-stream; the SMTP server gone for 60 s; PostgreSQL cut and SQLite locked for 60 s;
# a relay answering 451 or 421 to a third of the e-mails; SIGTERM mid-stream; 1,000 bad records among 10,000 good
# ones, and a replay of the fixed ones.
faults: $(STAMP)
	FAULT_EVENTS=10000 FAULT_KILLS=20 FAULT_BROKER_PAUSE=60 FAULT_SMTP_OUTAGE=60 FAULT_DB_OUTAGE=60 \
		FAULT_SERVICES=all $(BIN)/python -m pytest -q -rA \
		tests/integration/test_service_crash.py tests/integration/test_smtp_outage.py \
		tests/integration/test_database_outage.py tests/integration/test_graceful_shutdown.py \
		"tests/integration/test_bad_records.py::test_bad_records_among_good_ones_then_a_replay_of_the_fixed_ones" \
		"tests/integration/test_broker_restart.py::test_the_broker_killed_and_restarted_mid_stream_loses_nothing" \
		"tests/integration/test_broker_restart.py::test_the_broker_unreachable_for_a_while_mid_stream_loses_nothing" \
		"tests/integration/test_broker_restart.py::test_two_replicas_of_each_service_one_sigkilled_mid_stream_and_restarted"

# BENCH_ARGS: see `python -m ops.bench --help` (services, stores, sizes, broker).
bench: $(STAMP)
	$(BIN)/python -m ops.bench $(BENCH_ARGS)

smoke: $(STAMP)
	$(BIN)/python ../shared/tools/contract_smoke.py

schemas: $(STAMP)
	$(BIN)/python -m shared.schemas --write

catalogs: $(STAMP)
	$(BIN)/python -m ops.catalogs

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
