# Rule prepare_data: one call of prepare (see augdefense.runner).
from augdefense.data import prepare
from augdefense.runner import run_rule

run_rule(snakemake, prepare)  # noqa: F821 (Snakemake defines `snakemake` in the script)
