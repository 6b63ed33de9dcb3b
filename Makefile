# Two commands: `make demo` (the whole pipeline on the built-in demo benchmark) and `make test`.
# Both create .venv and install the project into it when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# profiles/default (one GPU job at a time) on a machine with an NVIDIA GPU, profiles/cpu otherwise
PROFILE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),profiles/default,profiles/cpu)

.PHONY: demo test lint unit clean-demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile $(PROFILE) --configfile configs/demo.yaml \
		--replace-workflow-config all

lint: $(STAMP)
	$(BIN)/ruff check src tests workflow/scripts benchmarks
	$(BIN)/ruff format --check src tests workflow/scripts benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile configs/demo.yaml --replace-workflow-config
	$(BIN)/snakemake --lint

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

test: lint
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf results/demo data/demo
