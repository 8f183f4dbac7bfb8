# Rule train_victim: one call of train_victim (see augdefense.runner).
from augdefense.jobs.train import train_victim
from augdefense.runner import run_rule

run_rule(snakemake, train_victim)  # noqa: F821 (Snakemake defines `snakemake` in the script)
