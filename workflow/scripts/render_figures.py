# Rule render_figures: one call of render_figure (see augdefense.runner).
from augdefense.figures import render_figure
from augdefense.runner import run_rule

run_rule(snakemake, render_figure)  # noqa: F821 (Snakemake defines `snakemake` in the script)
