# Rule sanitize: one call of sanitize (see augdefense.runner).
from augdefense.jobs.sanitize import sanitize
from augdefense.runner import run_rule

run_rule(snakemake, sanitize)  # noqa: F821 (Snakemake defines `snakemake` in the script)
