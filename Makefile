# sketchquant — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXP    ?= zs_sbir
ARGS   ?=
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with pip and install sketchquant + dev tools (free when already done)

train: install ## train the default experiment (EXP=zs_sbir) on the embedded data; ARGS="key=value ..."
	$(BIN)/sketchquant train $(EXP) $(ARGS)

test: install ## run the whole test suite (slow-marked DDP/resume/sweep tests included)
	$(BIN)/pytest -q

test-fast: install ## the tests without the slow marker
	$(BIN)/pytest -q -m "not slow"

lint: install ## ruff check + format check + the import contract (app -> plug-in folders -> core)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove caches and run outputs (keeps .venv and data/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info runs
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
