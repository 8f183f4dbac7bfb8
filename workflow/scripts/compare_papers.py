# Rule compare_papers: one call of compare_papers (see augdefense.runner).
from augdefense.runner import run_rule
from augdefense.tables import compare_papers

run_rule(snakemake, compare_papers)  # noqa: F821 (Snakemake defines `snakemake` in the script)
