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
.PHONY: help install train demo screenshot test test-fast lint format docs clean

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

DEMO_PORT ?= 7860
DEMO_DIR  ?= runs/demo
demo: install ## index the embedded benchmark's unseen-class photos with the newest `make train` run's best checkpoint (trains first if none), then serve the drawing page
	@newest() { last=$$(ls -t runs/zs_sbir/*/checkpoints/*.ckpt 2>/dev/null | head -1); [ -n "$$last" ] || return 0; \
		d=$$(dirname "$$last"); { ls -t "$$d"/best-*.ckpt 2>/dev/null || echo "$$last"; } | head -1; }; \
	ckpt=$$(newest); \
	if [ -z "$$ckpt" ]; then \
		echo "no zs_sbir checkpoint under runs/: training one first (make train)"; \
		$(MAKE) train EXP=zs_sbir || exit 1; \
		ckpt=$$(newest); \
	fi; \
	echo "checkpoint: $$ckpt"; \
	[ -f data/glyphs/unseen_classes.txt ] || $(BIN)/sketchquant data make || exit 1; \
	mkdir -p $(DEMO_DIR); \
	for c in $$(cat data/glyphs/unseen_classes.txt); do \
		for f in data/glyphs/photo/$$c/*; do echo "$$PWD/$$f,$$c"; done; \
	done > $(DEMO_DIR)/unseen_photos.csv; \
	$(BIN)/sketchquant index --ckpt "$$ckpt" --images $(DEMO_DIR)/unseen_photos.csv --out $(DEMO_DIR)/gallery && \
	$(BIN)/sketchquant serve --gallery $(DEMO_DIR)/gallery --port $(DEMO_PORT)

screenshot: install ## refresh docs/search_page.png (the README's picture) with the drawing page's browser test
	SKETCHQUANT_SCREENSHOT=$(CURDIR)/docs/search_page.png $(BIN)/pytest -q tests/test_serve_browser.py

test: install ## run the whole test suite (slow-marked DDP/resume/sweep tests included)
	$(BIN)/pytest -q

test-fast: install ## the tests without the slow marker
	$(BIN)/pytest -q -m "not slow"

docs: install ## render docs/benchmarks.md and README's figure blocks from benchmarks/results/*.json
	$(BIN)/python scripts/render_docs.py

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
