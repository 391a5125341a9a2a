# lit_recipes: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR := runs
TRAIN_ARGS ?=  # extra arguments for `make train`, e.g. TRAIN_ARGS=--trainer.max_epochs=3
export WANDB_SILENT ?= true
export NO_ALBUMENTATIONS_UPDATE := 1
export NO_MKDOCS_2_WARNING := 1

.DEFAULT_GOAL := help
.PHONY: help install train test test-full lint format docs docs-serve notebooks bench bench-gpu clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,docs]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install lit_recipes with its dev and docs tools

train: $(STAMP) ## train the default recipe on digits: LR range test -> 1cycle -> gap report
	$(BIN)/lit-recipes fit --config lit_recipes/configs/digits_lenet.yaml $(TRAIN_ARGS)

test: $(STAMP) ## the fast test suite (ddp tests included, slow ones not)
	$(BIN)/pytest -m "not slow and not gpu" -q --ignore=tests/test_docs_examples.py

test-full: $(STAMP) ## every test, slow ones included
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: $(STAMP) ## build the docs site (mkdocs --strict) into site/ and run every code block of README.md and docs/
	$(BIN)/mkdocs build --strict --site-dir site
	$(BIN)/pytest tests/test_docs_examples.py -q -p no:randomly -n auto

docs-serve: $(STAMP) ## serve the docs site at http://127.0.0.1:8000 with live reload
	$(BIN)/mkdocs serve

notebooks: $(STAMP) ## execute every notebook (nbmake)
	$(BIN)/pytest --nbmake notebooks -q -p no:randomly --nbmake-timeout=900 --timeout=3600  # a notebook is one test item: not the 300 s per-test limit

bench: $(STAMP) ## run the CPU benchmarks and print their figures
	@for f in benchmarks/bench_*.py; do \
		case $$f in *bench_fast.py) continue;; esac; \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done
	@echo "== benchmarks/bench_fast.py (CPU subset)"
	$(BIN)/python benchmarks/bench_fast.py --train-per-class 500 --test-per-class 200 --epochs 3 --no-range-test

bench-gpu: $(STAMP) ## on a CUDA machine: the GPU tests and the GPU figures of BENCHMARKS.md
	$(BIN)/pytest -m gpu -q
	$(BIN)/python benchmarks/bench_fast.py --seeds 0 1 2 3 4
	$(BIN)/python benchmarks/bench_fast.py --seeds 0 --compile
	$(BIN)/python benchmarks/bench_overhead.py --cifar 10000 --device cuda --batch-size 512 --epochs 4 --repeats 3
	$(BIN)/python benchmarks/bench_data.py --per-class 5000 --device cuda

clean: ## remove run outputs, caches and builds (keeps .venv)
	rm -rf $(RUN_DIR) wandb lightning_logs build dist site *.egg-info .pytest_cache .ruff_cache notebooks/runs
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
