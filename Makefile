# `make demo` and `make test` each work on a fresh clone: both depend on `setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := PATH="$(BIN):$$PATH" $(BIN)/snakemake
# The config `make demo` and `make report` use; `make report CONFIG=config.yaml` after a paper-scale run.
CONFIG ?= presets/quick.yaml

.PHONY: setup demo evidence test test-slurm lint schema report archive check bench gpu-check estimate mutation clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(SNAKEMAKE) --configfile $(CONFIG)
	@echo "Tables (demo):    $(CURDIR)/results/tables/ (table1, backdoor_control, table2, table5, figure4b, table4, table6: .md and .csv)"
	@echo "Figures:          $(CURDIR)/results/figures/ (the same tables as .png and .pdf; figure4a; illustrations)"
	@echo "Claims:           $(CURDIR)/results/claims.md (each claim: effect over seeds, 95% interval, verdict)"
	@cat results/tables/table1.md results/tables/table2.md results/tables/table5.md results/tables/figure4b.md results/tables/table4.md results/tables/table6.md results/claims.md

# The evidence run (presets/evidence.yaml): every headline claim at small scale, enough seeds for
# a verdict; in its own folder so that it and the demo keep their results side by side.
EVIDENCE_DIR ?= evidence
evidence: setup
	$(SNAKEMAKE) --directory $(EVIDENCE_DIR) --configfile $(CURDIR)/presets/evidence.yaml
	@echo "Claims (evidence): $(CURDIR)/$(EVIDENCE_DIR)/results/claims.md; tables in $(CURDIR)/$(EVIDENCE_DIR)/results/tables/"
	@cat $(EVIDENCE_DIR)/results/claims.md

test: setup
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-slurm: setup
	$(BIN)/python -m pip install --quiet -e '.[test,slurm]'
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

# Snakemake's own lint, then ruff (lint and format) over the package, tests and rule scripts.
lint: setup
	$(SNAKEMAKE) --lint
	$(BIN)/ruff check src tests workflow/scripts
	$(BIN)/ruff format --check src tests workflow/scripts

# The config schema is generated from the registries' Param tables: rerun after changing one.
schema: setup
	PATH="$(BIN):$$PATH" $(BIN)/python -m augdefense.schema --write

report: setup
	$(SNAKEMAKE) --configfile $(CONFIG) --report results/report.html
	@echo "Report: $(CURDIR)/results/report.html"

archive: setup
	PATH="$(BIN):$$PATH" $(BIN)/python -m augdefense archive

check: setup
	PATH="$(BIN):$$PATH" $(BIN)/python -m augdefense check-manifest results/provenance/manifest.tsv

# On a bare GPU node (torch, torchvision and numpy suffice): no venv, nothing installed, the package
# straight from this checkout; under 9 minutes. CIFAR10=path/to/cifar10-jpeg.tar.gz (or its extracted
# folder) gives the CIFAR-10 slice its data offline (else torchvision downloads CIFAR-10).
# GPUCHECK_ARGS=--tiny runs it at toy size (on the CPU too).
GPUCHECK_OUT ?= results/gpucheck
CIFAR10 ?=
gpu-check:
	PYTHONPATH=src $(PYTHON) -m augdefense.gpucheck $(GPUCHECK_OUT) $(if $(CIFAR10),--cifar10 $(CIFAR10)) $(GPUCHECK_ARGS)

# Job counts and device-hours of the paper-scale config (priced by a GPU check when one ran here; a check
# with failed measurements is refused, naming them) and the demo.
estimate: setup
	$(BIN)/python -m augdefense.estimate config.yaml $(if $(wildcard $(GPUCHECK_OUT)/gpucheck.json),--costs $(GPUCHECK_OUT)/gpucheck.json)
	$(BIN)/python -m augdefense.estimate presets/quick.yaml

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'  # IBM ART, for the crafting comparison
	PATH="$(BIN):$$PATH" $(BIN)/python -m augdefense.bench --demo

# Mutation testing of the pure modules ([tool.mutmut] in pyproject.toml); one torch thread per test
# process (forked workers and OpenMP's thread pool do not mix). Not part of `make test`.
mutation: setup
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/python tests/mutation_scores.py

clean:
	rm -rf results logs benchmarks scratch .snakemake mutants evidence
