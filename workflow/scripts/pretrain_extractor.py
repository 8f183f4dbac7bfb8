# Rule pretrain_extractor: one call of pretrain_extractor (see augdefense.runner).
from augdefense.jobs.train import pretrain_extractor
from augdefense.runner import run_rule

run_rule(snakemake, pretrain_extractor)  # noqa: F821 (Snakemake defines `snakemake` in the script)
