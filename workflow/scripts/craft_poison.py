# Rule craft_poison: one call of craft_poison (see augdefense.runner).
from augdefense.jobs.craft import craft_poison
from augdefense.runner import run_rule

run_rule(snakemake, craft_poison)  # noqa: F821 (Snakemake defines `snakemake` in the script)
