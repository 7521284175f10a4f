# Quick start targets. Each creates (or reuses) .venv/ at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup build build-cuda test test-fast demo lint clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev,fast-eval,export]"
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PY) -m ops.build

build-cuda: setup
	$(PY) -m ops.build --cuda

test: build
	$(PY) -m pytest -q

test-fast: build
	$(PY) -m pytest -q -m "not slow"

demo: build
	$(PY) train.py experiment=demo

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf .build outputs multirun
