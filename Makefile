# The two commands a fresh machine needs:
#   make serve   install the gateway and serve the committed default model on 127.0.0.1:8080
#   make test    install everything and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: serve test install-serve install-dev lint bench dataset train clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,train,bench,dev]'
	touch $@ $(VENV)/.serve-installed

install-serve: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed

serve: install-serve
	$(BIN)/uvicorn serving.app:app --host $(HOST) --port $(PORT)

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev
	$(BIN)/python bench/nt_overhead.py

dataset: install-dev
	$(BIN)/python training/build_dataset.py --out data/full --size full

train: install-dev
	$(BIN)/python training/train.py --config training/configs/default.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
