# The first two commands of the README: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format browser clean help

help:
	@echo "make demo   - the main job on the built-in data set"
	@echo "make test   - the whole test suite (slow end-to-end tests included)"
	@echo "make lint   - ruff"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the browser tests (Debian's package; Playwright drives it, nothing is downloaded).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; }

# The main job: train AlexNet on the built-in shapes set (generated once into ~/.cache/alexnet) with the `demo`
# recipe (docs/training.md says how it differs from the paper), then evaluate it with ten crops (AlexNet §4.1).
DEMO_RUN ?= runs/demo
demo: $(STAMP)
	$(BIN)/alexnet summary --compare alexnet zfnet
	rm -rf $(DEMO_RUN)
	$(BIN)/alexnet train --model alexnet --recipe demo --out $(DEMO_RUN)
	$(BIN)/alexnet eval --run $(DEMO_RUN) --ten-crop
	@echo "results in $(DEMO_RUN)/: metrics.csv, learning_curve.png, train.log, results.json, model.safetensors"
	$(BIN)/alexnet report $(DEMO_RUN)

# Two pytest workers (pytest-xdist): much of the suite is single-threaded process start-up (each `alexnet`
# command imports torch and torchvision), so two workers on 2 cores took 11.8 min where one took 17 (Session 22).
# Each worker runs torch on its share of the cores (tests/conftest.py): 10.6 min instead of 13.7 (Session 27).
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info
