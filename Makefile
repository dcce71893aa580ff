# The two commands a newcomer needs: `make run` and `make test`. Everything else
# they need (virtualenv, Kafka jars, a local broker) is installed on the way.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-unit test-long test-cluster lint format demo chaos bench image kafka-up kafka-down kafka-status jars clean help

help:
	@echo "make run         start a local broker if none answers, then the worker"
	@echo "make test        every test but the cluster ones, against a broker started for the session"
	@echo "make test-unit   only the fast tests (no Kafka)"
	@echo "make test-long   the tests past make test's budget (the cluster's, static membership, growing topics)"
	@echo "make test-cluster  the three-broker cluster tests (replication, a broker lost)"
	@echo "make lint        ruff check and format check"
	@echo "make demo        one minute: broker, worker, simulated agents and tail, then a summary"
	@echo "make chaos       kill/rebalance/wipe/broker-restart run, then the recovery figure"
	@echo "                 (CHAOS_ARGS=\"--brokers 3\": a cluster, one broker SIGKILLed mid-stream)"
	@echo "make bench       throughput vs a passthrough ceiling, latency, RSS, codecs (BENCH_ARGS=...)"
	@echo "make image       the container image (docker, else podman; IMAGE=name:tag)"
	@echo "make kafka-up / kafka-down   the local broker on its own"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found: install Python 3.11"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

jars: $(STAMP)
	@$(PY) -m localkafka fetch

run: jars
	@$(PY) -m localkafka run -- $(VENV)/bin/cameleer-merger

test: jars
	$(PY) -m pytest -q -m "not cluster and not long" $(PYTEST_ARGS)

test-long: jars
	$(PY) -m pytest -q -m "cluster or long" $(PYTEST_ARGS)

test-cluster: jars
	$(PY) -m pytest -q -m cluster $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: jars
	@$(PY) -m demo $(DEMO_ARGS)

chaos: jars
	$(PY) -m chaos $(CHAOS_ARGS)

bench: jars
	$(PY) -m bench $(BENCH_ARGS)

IMAGE ?= cameleer-merger:0.1.0
image:
	@engine=$$(command -v docker || command -v podman) || { echo "error: install docker or podman"; exit 2; }; \
	$$engine build -t $(IMAGE) .

kafka-up: jars
	@$(PY) -m localkafka up

kafka-down: $(STAMP)
	@$(PY) -m localkafka down

kafka-status: $(STAMP)
	@$(PY) -m localkafka status

clean:
	rm -rf $(VENV) .cache/kafka-data .kafka state
