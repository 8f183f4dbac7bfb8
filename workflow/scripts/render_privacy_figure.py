# Rule render_privacy_figure: one call of render_privacy_figure (see augdefense.runner).
from augdefense.figures import render_privacy_figure
from augdefense.runner import run_rule

run_rule(snakemake, render_privacy_figure)  # noqa: F821 (Snakemake defines `snakemake` in the script)
