# Rule render_claims: one call of render_claims (see augdefense.runner).
from augdefense.claims import render_claims
from augdefense.runner import run_rule

run_rule(snakemake, render_claims)  # noqa: F821 (Snakemake defines `snakemake` in the script)
