# Rule train_crafting_model: one call of train_crafting_model (see augdefense.runner).
from augdefense.jobs.train import train_crafting_model
from augdefense.runner import run_rule

run_rule(snakemake, train_crafting_model)  # noqa: F821 (Snakemake defines `snakemake` in the script)
