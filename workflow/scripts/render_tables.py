# Rule render_tables: one call of render_table (see augdefense.runner).
from augdefense.tables import render_table
from augdefense.runner import run_rule

run_rule(snakemake, render_table)  # noqa: F821 (Snakemake defines `snakemake` in the script)
