# Rule train_feature_model: one call of train_feature_model (see augdefense.runner).
from augdefense.jobs.train import train_feature_model
from augdefense.runner import run_rule

run_rule(snakemake, train_feature_model)  # noqa: F821 (Snakemake defines `snakemake` in the script)
