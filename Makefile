# The two commands of the README: `make demo` (the whole job on the embedded stack) and
# `make test` (the whole test suite). Each creates or updates .venv/ first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
UV_VERSION := 0.13.9
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

.PHONY: venv demo stop test test-unit audit sysdeps lint clean help

help:
	@echo "make demo   run the whole monthly job end to end on the embedded stack"
	@echo "make test   run the whole test suite"
	@echo "make stop   stop the API, the UIs and the embedded PostgreSQL the demo started"

# One source of truth for installs: the Dockerfile runs `make venv` too. Bytecode is compiled at
# install time, so every later process starts fast even where Python may not write __pycache__.
venv: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@date +%s > $(VENV).started 2>/dev/null || true
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --compile-bytecode --python $(VENV)/bin/python
	@echo $$(( $$(date +%s) - $$(cat $(VENV).started) )) > $(VENV)/.install-seconds; rm -f $(VENV).started
	@touch $@

# System tools some tests use (redis-server, promtool, hey). Installed with apt-get when
# we are root on a Debian-like machine; otherwise the script says what is missing.
sysdeps:
	@bash ops/scripts/sysdeps.sh

# The install time of this run (if it installed anything) goes into the demo's time-per-phase table.
demo: venv
	@secs=$$(cat $(VENV)/.install-seconds 2>/dev/null); rm -f $(VENV)/.install-seconds; \
	$(VENV)/bin/streamflow demo $${secs:+--install-seconds $$secs}

# Stop what the demo left running: the API, the UIs and the embedded PostgreSQL.
stop:
	@test -x $(VENV)/bin/streamflow && $(VENV)/bin/streamflow stop || true

# Two pytest workers (pytest-xdist), each test module whole on one of them, handed out in the order of
# tests/conftest.py (longest first): most of a test's time is spent waiting on the servers, dbt and Airflow it
# starts, so two at a time use both cores. TEST_WORKERS=0 runs them one by one.
TEST_WORKERS ?= 2

test: venv sysdeps
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Every locked package against the known advisories (pip-audit on PyPI's JSON API; needs network). Accepted
# advisories, each with its reason and review date: ops/pip-audit-allowlist.toml. The hosted workflow runs it as a job of its own.
audit: venv
	$(VENV)/bin/python ops/scripts/audit_dependencies.py

test-unit: venv
	$(VENV)/bin/python -m pytest tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean: stop
	rm -rf .streamflow
