# `make demo` installs the runtime (requirements.txt) and then the project itself, editable, into .venv and runs the
# main job; `make test` adds the test tools (requirements-test.txt) and runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-test demo test test-slow bench clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The project editable (`pip install -e .`): its packages and scripts import from any folder, the console scripts
# (insightface-train, ...) land in $(BIN), and edits to the tree take effect without reinstalling. --no-deps: the
# dependencies are requirements.txt's pins, installed just before. The build runs isolated (pip fetches setuptools
# from the registry), as a venv of Python 3.12+ has no setuptools of its own. Reinstall after adding a top-level
# package: the editable install maps the packages that exist when it runs.
$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

demo: setup
	$(BIN)/python demo.py

# pytest-xdist workers: one per core, at most 4; whole files go to one worker, so a module's fixtures run once.
# Most tests spend their time in one-core Python (imports, tracing), so 2 workers on 2 cores halve the wall time.
# `make test TEST_WORKERS=0` runs in this process, serially.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses=4 --dist loadfile

test: setup-test
	$(PYTEST)

test-slow: setup-test
	$(PYTEST) -m slow

# Every bench/bench_*.py, then one table of bench/results/*.json (bench/README.md); BENCH_ARGS=--quick=true for a check.
bench: setup
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) output *.egg-info build
