# keepflow developer tasks. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test test-serial test-fast lint bench bench-smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed  ## run the example workflow end to end on the embedded SQLite store
	$(PY) examples/orders/demo.py

# One test at a time to each worker (--maxschedchunk 1), longest (`slow`) first: see
# pytest_collection_modifyitems in tests/conftest.py.
test: $(VENV)/.installed  ## the whole test suite (SQLite and PostgreSQL), on both cores
	$(PY) -m pytest -q -n 2 --maxschedchunk 1

test-serial: $(VENV)/.installed  ## the whole suite in one process (e.g. to debug an ordering effect)
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed  ## unit tests only
	$(PY) -m pytest -q tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed  ## every benchmark on SQLite and PostgreSQL -> bench/results/, docs/performance.md
	$(PY) -m bench

bench-smoke: $(VENV)/.installed  ## the same, tiny sizes, into /tmp (numbers mean nothing; CI runs it as a test)
	$(PY) -m bench --quick --output /tmp/keepflow-bench-smoke.json --docs /tmp/keepflow-bench-smoke

clean:
	rm -rf $(VENV) .keepflow .pytest_cache .mypy_cache .ruff_cache
