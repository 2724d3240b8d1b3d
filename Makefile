# `make demo` installs the runtime (requirements.txt) into .venv and runs the main job; `make test` adds the test tools
# (requirements-test.txt) and runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-test demo test test-slow bench clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

demo: setup
	$(BIN)/python demo.py

test: setup-test
	$(BIN)/python -m pytest

test-slow: setup-test
	$(BIN)/python -m pytest -m slow

# Every bench/bench_*.py, then one table of bench/results/*.json (bench/README.md); BENCH_ARGS=--quick=true for a check.
bench: setup
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) output
