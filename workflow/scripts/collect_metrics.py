# Rule collect_metrics: one call of collect_metrics (see augdefense.runner).
from augdefense.runner import run_rule
from augdefense.tables import collect_metrics

run_rule(snakemake, collect_metrics)  # noqa: F821 (Snakemake defines `snakemake` in the script)
