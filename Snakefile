"""augdefense: regenerate the papers' tables and figures.

    snakemake --cores all --resources gpu=4                     # paper scale (config.yaml)
    snakemake --cores all --configfile presets/quick.yaml       # offline CPU demo

A --configfile replaces config.yaml (presets are complete configs, not overlays); --config
key=value still overrides single entries.
"""

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
import augdefense.config as grid  # torch-free: checks and the experiment grid

if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config.yaml"


# The schema is generated from the registries' Param tables (`make schema`); validating fills in
# every default, so each job's params hold complete config entries.
validate(config, "workflow/schemas/config.schema.yaml")
grid.check_config(config)


# The HTML report's front page (make report): what ran, at what scale, where the claims are.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/poison.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/tables/{table}.{ext}", table=config["experiments"], ext=["csv", "md"]),
        expand("results/figures/{table}.{ext}", table=config["experiments"], ext=["png", "pdf"]),
        "results/figures/illustrations.png",
        "results/figures/figure4a.png",
        "results/paper_comparison.md",
        "results/claims.md",
        "results/provenance/manifest.tsv",
    default_target: True


onstart:
    # Local runs only: a remote executor (SLURM) gives each GPU job its own GPU.
    if workflow.local_exec and not workflow.remote_exec:
        from augdefense import gpu

        warning = gpu.unlimited_gpu_jobs_message(
            config["runtime"]["device"],
            gpu_jobs=sum(1 for job in workflow.dag.needrun_jobs() if job.resources.get("gpu")),
            gpu_limit="gpu" in workflow.resource_settings.resources,
            gpus=gpu.visible_nvidia_gpus(),
            cores=workflow.resource_settings.cores or 1,
        )
        if warning:
            print(warning, file=sys.stderr)
    # Not on remote executors (SLURM): their jobs run elsewhere, in their own processes.
    if config["warm_worker"] and config["runtime"]["device"] == "cpu" and workflow.local_exec and not workflow.remote_exec:
        from augdefense import forkserver

        forkserver.start("logs/warm_worker.log")


onsuccess:
    tables = ", ".join(f"results/tables/{t}.md" for t in config["experiments"])
    print(f"\naugdefense: tables in {tables}; figures in results/figures/; "
          f"per-run metrics in results/metrics.csv; comparison with the papers in results/paper_comparison.md; "
          f"the papers' claims tested in results/claims.md; output checksums in results/provenance/manifest.tsv")
