# Rule resolved_config: one call of write_config (see augdefense.runner).
from augdefense.provenance import write_config
from augdefense.runner import run_rule

run_rule(snakemake, write_config)  # noqa: F821 (Snakemake defines `snakemake` in the script)
