# The two commands a newcomer needs: `make run` and `make test`. Both bootstrap .venv first:
# `make run` installs the runtime packages only, `make test` adds the dev tools.
# Every version comes from constraints.txt; uv (itself pinned there) does the installing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv pip install --python $(BIN)/python -c constraints.txt --build-constraints constraints.txt
RUNTIME := $(VENV)/.runtime
DEV := $(VENV)/.dev

.PHONY: install install-dev run test lint bench system-deps clean

$(BIN)/uv: constraints.txt
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> installing uv, the package installer used below"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt uv
	touch $@

$(RUNTIME): $(BIN)/uv packages/neondb/pyproject.toml packages/todo-api/pyproject.toml
	@echo "==> installing neondb and todo-api with their runtime dependencies (no dev tools)"
	$(UV) -e 'packages/neondb[all]' -e packages/todo-api
	touch $@

$(DEV): $(RUNTIME) dev-requirements.txt
	@echo "==> installing the dev tools (pytest, schemathesis, mypy, ruff, matplotlib)"
	$(UV) -r dev-requirements.txt
	touch $@

install: $(RUNTIME)

install-dev: $(DEV)

run: install
	$(BIN)/todo-api serve

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check packages tests bench
	$(BIN)/ruff format --check packages tests bench
	$(BIN)/mypy

# PgBouncer, Debian's PostgreSQL (TLS; the embedded wheel has no OpenSSL) and wrk, for the
# tests and the benchmark that start them; installed with apt when missing (needs root).
system-deps:
	@bash .ci/system-deps

# `make bench QUICK=1`: every app, 32 clients, 1 s per figure (under 2 minutes); the full run
# takes about 12. Results in bench/results/ (latest.md, latest.png, latest.json).
QUICK ?=
bench: install-dev system-deps
	QUICK="$(QUICK)" $(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .neondb .pytest_cache .mypy_cache .ruff_cache
