# Quick start targets. Each creates (or reuses) .venv/ at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup build build-cuda wheel test test-fast demo lint clean

# torch first: setup.py builds against the installed torch, so the install runs without build isolation. An
# editable install compiles no ops; the checkout JIT-compiles them into .build/ (make build).
$(VENV)/.installed: pyproject.toml setup.py constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt torch torchvision "setuptools>=69" wheel
	$(PY) -m pip install -q -c constraints-cpu.txt --no-build-isolation -e ".[dev,fast-eval,export]"
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PY) -m ops.build

build-cuda: setup
	$(PY) -m ops.build --cuda

# The installable wheel (compiled ops, configs, console scripts) in dist/; ROI_OPS_CUDA=1 adds the CUDA ops and
# ROI_OPS_CPU_CAPABILITIES=native builds only this machine's CPU library (see setup.py).
wheel: setup
	$(PY) -m pip wheel . --no-deps --no-build-isolation -w dist

# pytest-xdist: one worker per core (at most 4), whole files per worker so that a module's fixtures are built once;
# tests/conftest.py gives each worker its share of the cores. A plain `pytest` runs the same tests in one process.
PYTEST := $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test: build
	$(PYTEST)

test-fast: build
	$(PYTEST) -m "not slow"

demo: build
	$(PY) train.py experiment=demo

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf .build build dist outputs multirun
