from augdefense import titles
from augdefense.illustrations import illustrated_defenses


rule collect_metrics:
    input:
        runs=[grid.victim_path(a, d, s) for a, d, s in grid.victim_runs(config)],
        code=code("augdefense.tables"),
    output:
        out=report("results/metrics.csv", category=titles.METRICS, caption="../report/metrics.rst"),
    log:
        "logs/collect_metrics.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/collect_metrics.py"


rule render_tables:
    input:
        metrics="results/metrics.csv",
        code=code("augdefense.tables"),
    output:
        csv=report("results/tables/{table}.csv", category=lambda w: titles.experiment_title(w.table),
                   subcategory="Table", caption="../report/table.rst"),
        md="results/tables/{table}.md",
    params:
        table=lambda w: w.table,
        experiment=lambda w: spec(config["experiments"][w.table]),
        scale=SCALE,
    log:
        "logs/render_tables/{table}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/render_tables.py"


rule render_figures:
    input:
        metrics="results/metrics.csv",
        code=code("augdefense.figures"),
    output:
        png=report("results/figures/{table}.png", category=lambda w: titles.experiment_title(w.table),
                   subcategory="Figure", caption="../report/figure.rst"),
        pdf="results/figures/{table}.pdf",
    params:
        table=lambda w: w.table,
        experiment=lambda w: spec(config["experiments"][w.table]),
        defenses=lambda w: spec({d: config["defenses"][d] for d in config["experiments"][w.table]["defenses"]}),
        scale=SCALE,
    log:
        "logs/render_figures/{table}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/render_figures.py"


rule render_illustrations:
    input:
        data=PREPARED_DATA,
        poison=ILLUSTRATED_POISON,
        code=code("augdefense.illustrations"),
    output:
        png=report("results/figures/illustrations.png", category=titles.ILLUSTRATIONS,
                   caption="../report/illustrations.rst"),
        pdf="results/figures/illustrations.pdf",
    params:
        # Only the defenses drawn: editing another one does not redraw the illustrations.
        defenses=spec(illustrated_defenses(config["experiments"], config["defenses"])),
    log:
        "logs/render_illustrations.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/render_illustrations.py"


rule render_privacy_figure:
    input:
        code=code("augdefense.figures"),
    output:
        png=report("results/figures/figure4a.png", category=titles.FIGURE4A,
                   caption="../report/figure4a.rst"),
        pdf="results/figures/figure4a.pdf",
        csv="results/figures/figure4a.csv",
    log:
        "logs/render_privacy_figure.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/render_privacy_figure.py"


rule compare_papers:
    input:
        metrics="results/metrics.csv",
        code=code("augdefense.tables"),
    output:
        csv=report("results/paper_comparison.csv", category=titles.COMPARISON,
                   caption="../report/comparison.rst"),
        md="results/paper_comparison.md",
    params:
        experiments=spec(config["experiments"]),
        scale=SCALE,
    log:
        "logs/compare_papers.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/compare_papers.py"


rule render_claims:
    input:
        metrics="results/metrics.csv",
        code=code("augdefense.claims"),
    output:
        csv=report("results/claims.csv", category=titles.CLAIMS, caption="../report/claims.rst"),
        md="results/claims.md",
    params:
        experiments=spec(config["experiments"]),
        scale=SCALE,
    log:
        "logs/render_claims.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/render_claims.py"


rule resolved_config:
    input:
        code=code("augdefense.provenance"),
    output:
        out="results/provenance/config.json",
    params:
        # The one rule that reads the whole config (defaults filled in): it records it for reviewers.
        config=spec(config),
    log:
        "logs/resolved_config.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/resolved_config.py"


rule provenance_manifest:
    input:
        files=WORKFLOW_OUTPUTS + ["results/provenance/config.json"],
        code=code("augdefense.provenance"),
    output:
        out="results/provenance/manifest.tsv",
    log:
        "logs/provenance_manifest.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/provenance_manifest.py"
