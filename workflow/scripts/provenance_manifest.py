# Rule provenance_manifest: one call of write_manifest (see augdefense.runner).
from augdefense.provenance import write_manifest
from augdefense.runner import run_rule

run_rule(snakemake, write_manifest)  # noqa: F821 (Snakemake defines `snakemake` in the script)
