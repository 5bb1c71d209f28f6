# Two commands for a fresh machine with python3 (3.11+) and make:
#   make run   - set up .venv, simulate scenarios/baseline.yaml into celltx.db, print KPIs, serve the dashboard
#   make test  - set up .venv, install a browser for the UI test if possible, run the test suite
#   make lint  - ruff and mypy on src/ (configured in pyproject.toml), then the longest/most complex functions
#   make docs  - regenerate docs/validation.md and docs/reliability.md (tests never write tracked files)
#   make lock  - re-pin requirements.lock (runtime) and requirements-dev.lock (tests, lint, extras) with hashes
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
DB     ?= celltx.db
PORT   ?= 8501

.PHONY: run test test-slow lint docs lock setup browser postgres bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "celltx-mfg needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# What tests, lint and benchmarks need besides the runtime: pytest, hypothesis, playwright, ruff, mypy,
# the PostgreSQL driver and Ray (pinned with the runtime in one lock, so the two never disagree).
$(DEV): $(STAMP) requirements-dev.lock
	$(PIP) --require-hashes -r requirements-dev.lock
	touch $(DEV)

# Re-pin both locks from pyproject.toml, keeping every version already pinned (delete a line to upgrade it).
# Needs uv on PATH (pip install uv).
LOCK = uv pip compile pyproject.toml - --python-version 3.11 --generate-hashes --no-header --no-annotate --quiet
BUILD_PINS = printf 'setuptools==80.9.0\nwheel==0.48.0\n'
lock:
	cp requirements-dev.lock build-constraints.tmp
	$(BUILD_PINS) | $(LOCK) -c build-constraints.tmp -o requirements.lock
	$(BUILD_PINS) | $(LOCK) -c build-constraints.tmp --extra dev --extra postgres --extra ray -o requirements-dev.lock
	rm -f build-constraints.tmp

run: $(STAMP)
	$(BIN)/celltx run scenarios/baseline.yaml --db $(DB)
	@echo "Serving the dashboard on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	$(BIN)/celltx dashboard --db $(DB) --port $(PORT)

# Browser tests drive Debian's chromium; install it when missing and we are allowed to.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: browser tests will skip"; \
	  else echo "chromium missing and cannot be installed here: browser tests will skip"; fi; }

# PostgreSQL tests start a throw-away server from Debian's postgresql binaries; install them when missing.
postgres:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "postgresql could not be installed: PostgreSQL tests will skip"; \
	  else echo "postgresql missing and cannot be installed here: PostgreSQL tests will skip"; fi; }

test: $(DEV) browser postgres
	$(BIN)/python -m pytest -q

test-slow: $(DEV)
	$(BIN)/python -m pytest -q -m slow

lint: $(DEV)
	$(BIN)/ruff check src tests dashboards benchmarks scripts
	$(BIN)/mypy
	@$(BIN)/python scripts/code_report.py

# The reliability report lists every bad-input, fault and tampering case with its outcome, slow ones included.
docs: $(DEV)
	CELLTX_RELIABILITY_REPORT=$(CURDIR)/docs/reliability.md $(BIN)/python -m pytest -q -m "slow or not slow" \
	  tests/test_fuzz_scenarios.py tests/test_faults.py tests/test_integrity.py \
	  tests/test_foreign_stores.py tests/test_input_limits.py tests/test_input_sources.py
	$(BIN)/python scripts/validation_report.py
	$(BIN)/python scripts/data_dictionary.py

bench: $(DEV)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
