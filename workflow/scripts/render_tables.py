# Rule render_tables: one call of render_table (see augdefense.runner).
from augdefense.runner import run_rule
from augdefense.tables import render_table

run_rule(snakemake, render_table)  # noqa: F821 (Snakemake defines `snakemake` in the script)
