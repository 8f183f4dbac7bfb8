# Rule render_illustrations: one call of render_illustrations (see augdefense.runner).
from augdefense.illustrations import render_illustrations
from augdefense.runner import run_rule

run_rule(snakemake, render_illustrations)  # noqa: F821 (Snakemake defines `snakemake` in the script)
