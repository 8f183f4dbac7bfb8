# Rule compare_papers: one call of compare_papers (see augdefense.runner).
from augdefense.tables import compare_papers
from augdefense.runner import run_rule

run_rule(snakemake, compare_papers)  # noqa: F821 (Snakemake defines `snakemake` in the script)
