# Two commands for a fresh clone: `make demo` and `make test`. Each makes .venv if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The FastAPI example on the embedded SQLite default, with a fresh demo key.
demo: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples]'
	$(BIN)/python examples/fastapi_app/app.py

# The whole test suite (PostgreSQL and Redis tests skip when those servers are absent).
test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,examples,postgres,redis]'
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,test,examples,postgres,redis]'
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy

bench: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench,postgres,redis]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache meterware.db meterware.db-wal meterware.db-shm
