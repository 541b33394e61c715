# Two commands do all the set-up: `make run` and `make test`.
# Every target installs what it needs first (into .venv), so a fresh clone works.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Test processes (pytest-xdist), each with its own PostgreSQL and Redis; a test
# file stays in one process (its module fixtures are shared). 0: one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
WORKERS ?= 2
SUSTAIN ?= 60
SOAK    ?= 60
ROUNDS  ?= 3
PORT    ?= 8000
EVENTS  ?= 10000000

.PHONY: install browser screenshots run test test-unit test-integration test-faults lint format stress bench bench-read attacks chaos clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The SDK is its own distribution (clients/python); the service depends on it.
	$(BIN)/python -m pip install --quiet -e ./clients/python -e '.[dev,stress]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the service with dev, test and stress extras

# Debian's Chromium for the dashboard's browser tests (Playwright cannot download its
# own here). Installed where this user may (root with apt-get); elsewhere the browser
# tests are skipped and the test summary says so. CI requires it (.ci/run).
browser:  ## install Debian's chromium for the browser tests, where possible
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -qq chromium >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	echo "make: no chromium (needs root and apt-get): the browser tests will be skipped"

screenshots: install browser  ## the browser tests, writing the README's dashboard screenshots
	UPDATE_README_SCREENSHOTS=1 $(BIN)/python -m pytest tests/browser $(PYTEST_ARGS)

run: install  ## embedded PostgreSQL + Redis, migrate, create a dev key, serve on :8000 (PORT=8010: elsewhere)
	$(BIN)/labs-analytics dev --port $(PORT)

test: install browser  ## the whole suite: unit, integration, faults, browser
	$(PYTEST) $(PYTEST_ARGS)

test-unit: install
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PYTEST) tests/integration $(PYTEST_ARGS)

test-faults: install
	$(PYTEST) tests/faults $(PYTEST_ARGS)

lint: install  ## ruff, ruff-format and mypy, as in pre-commit and CI
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

stress: install  ## 30 s headless load test of a running server: LABS_API_KEY=… make stress [HOST=…]
	$(BIN)/locust -f stress/locustfile.py --headless -u 20 -r 10 -t 30s --host $${HOST:-http://127.0.0.1:8000}

bench: install  ## measure against the framework floor and the COPY ceiling; writes BENCHMARKS.md
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -qq wrk >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1)); } || \
		echo "bench: wrk is not installed; using the Python load generator"
	$(BIN)/python stress/bench.py --workers $(WORKERS) --sustain $(SUSTAIN) --soak $(SOAK) --rounds $(ROUNDS)

bench-read: install  ## the read side over EVENTS generated events (EVENTS=200000: quick); writes BENCHMARKS.md
	$(BIN)/python stress/bench_read.py --events $(EVENTS) --workers $(WORKERS)

attacks: install  ## a quiet client's p50 alone and under each attack (issue 8); writes BENCHMARKS.md
	$(BIN)/python stress/attacks.py --seconds $${SECONDS_EACH:-10}

chaos: install  ## random faults under load against its own stack; prints acked/lost/duplicated
	$(BIN)/python stress/chaos.py --duration $${DURATION:-120}

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
