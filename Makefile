# One command each: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv if missing and install the project with torch pinned (a plain
# `torch` requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint train bench bench-peers clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/p2pinfer demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# LitServe, Ray Serve and PyTriton beside the floor and the nodes (benchmarks.overhead --peers), in a
# venv of their own: Ray brings many packages the node's venv should not take on
PEERS_VENV := .venv-peers
bench-peers:
	test -d $(PEERS_VENV) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(PEERS_VENV)/bin/pip install --quiet -e ".[dev,bench-peers]"
	OMP_NUM_THREADS=1 $(PEERS_VENV)/bin/python -m benchmarks.overhead --backend onnxruntime \
		--peers litserve,ray-serve,pytriton --out benchmarks/results/overhead-peers.json

train: $(STAMP)
	$(BIN)/python -m zoo.train

clean:
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache build *.egg-info
