# Rule collect_metrics: one call of collect_metrics (see augdefense.runner).
from augdefense.tables import collect_metrics
from augdefense.runner import run_rule

run_rule(snakemake, collect_metrics)  # noqa: F821 (Snakemake defines `snakemake` in the script)
