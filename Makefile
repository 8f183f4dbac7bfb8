# `make demo` and `make test` each work on a fresh clone: both depend on `setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := PATH="$(BIN):$$PATH" $(BIN)/snakemake

.PHONY: setup demo test lint report clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(SNAKEMAKE) --cores 2 --configfile presets/quick.yaml
	@echo "Table 1 (demo):   $(CURDIR)/results/tables/table1.md"
	@echo "Figures:          $(CURDIR)/results/figures/ (table1.png, table1.pdf)"
	@cat results/tables/table1.md

test: setup
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: setup
	$(SNAKEMAKE) --lint

report: setup
	$(SNAKEMAKE) --report results/report.html $(if $(CONFIG),--configfile $(CONFIG))

clean:
	rm -rf results logs benchmarks .snakemake
