# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint typecheck pytest bench bench-service bench-instructions clean venv browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## make run: the bridge service with examples/bridge.yaml and simulated peers on loopback; Ctrl-C stops
run: $(STAMP)
	$(BIN)/python -m bridge.demo --config examples/bridge.yaml

## make demo: translate the example records to FHIR and back
demo: $(STAMP)
	$(BIN)/python -m bridge.demo translate examples

## make test: ruff, mypy --strict and the whole test suite (the browser test included)
test: $(STAMP) browser lint typecheck pytest

## make browser: Debian's chromium and chromium-driver for the console's browser test (as root, once)
browser:
	@test -x /usr/bin/chromedriver -a -x /usr/bin/chromium || { \
		echo "installing chromium and chromium-driver for the browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict bridge

# Everything but the reliability tier runs on both cores; the reliability tier (crash loops, several
# processes, a database restart) runs alone after it, so nothing else shares the machine with it.
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not reliability"
	$(BIN)/python -m pytest -q -m reliability

## make bench: the benchmarks that need nothing but this machine, JSON on stdout (make bench-service,
## and benchmarks/scaleout.py with BRIDGE_TEST_POSTGRES_URL, for the service and the multi-node figures)
bench: $(STAMP)
	$(BIN)/python benchmarks/translate.py
	$(BIN)/python benchmarks/medcom_validate.py
	$(BIN)/python benchmarks/outbox.py --engine sqlite
	$(BIN)/python benchmarks/auth.py

## make bench-service: the service benchmark (accepts, latency, deliveries, floors, RSS), JSON on stdout
bench-service: $(STAMP)
	$(BIN)/python benchmarks/service.py --queued 20000

## make bench-instructions: instructions per message (valgrind), validation against accept, JSON on stdout
bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/instructions.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## make reliability: the reliability tier with its long sizes (see docs/reliability.md); needs PostgreSQL
.PHONY: reliability
reliability: $(STAMP)
	BRIDGE_RELIABILITY_KILLS=300 BRIDGE_RELIABILITY_MESSAGES=4000 \
	BRIDGE_RELIABILITY_CONCURRENT_MESSAGES=10000 BRIDGE_RELIABILITY_RESTART_MESSAGES=3000 \
	$(BIN)/python -m pytest -q -s -m reliability tests/reliability

## make fuzz: the hostile-input tier with long budgets (schemathesis against the running service,
## hypothesis against the parsers and the mapping engine, slow clients); see docs/hostile-input.md
.PHONY: fuzz
fuzz: $(STAMP)
	BRIDGE_FUZZ_EXAMPLES=500 BRIDGE_FUZZ_SECONDS=1200 $(BIN)/python -m pytest -q -s tests/fuzz
