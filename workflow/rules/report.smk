rule collect_metrics:
    input:
        runs=[f"results/runs/{a}/{d}/{s}.json" for a, d, s in grid.victim_runs(config)],
        code=code("reporting.py"),
    output:
        report("results/metrics.csv", category="Per-run metrics", caption="../report/metrics.rst"),
    log:
        "logs/collect_metrics.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense collect-metrics --out {output} {input.runs} > {log} 2>&1"


rule render_tables:
    input:
        metrics="results/metrics.csv",
        code=code("reporting.py", "metrics.py", "paper_numbers.csv"),
    output:
        csv=report("results/tables/{table}.csv", category="{table}", subcategory="table",
                   caption="../report/table.rst"),
        md="results/tables/{table}.md",
    params:
        experiment=lambda w: grid.as_json(config["experiments"][w.table]),
        scale=SCALE,
    log:
        "logs/render_tables/{table}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense render-table --metrics {input.metrics} --table {wildcards.table} "
        "--experiment {params.experiment:q} --out {output.csv} {output.md} > {log} 2>&1"


rule render_figures:
    input:
        metrics="results/metrics.csv",
        code=code("reporting.py", "metrics.py", "paper_numbers.csv"),
    output:
        png=report("results/figures/{table}.png", category="{table}", subcategory="figure",
                   caption="../report/figure.rst"),
        pdf="results/figures/{table}.pdf",
    params:
        experiment=lambda w: grid.as_json(config["experiments"][w.table]),
        defenses=lambda w: grid.as_json({d: config["defenses"][d] for d in config["experiments"][w.table]["defenses"]}),
        scale=SCALE,
    log:
        "logs/render_figures/{table}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense render-figure --metrics {input.metrics} --table {wildcards.table} "
        "--experiment {params.experiment:q} --defenses {params.defenses:q} --out {output.png} {output.pdf} > {log} 2>&1"


rule render_illustrations:
    input:
        data=PREPARED_DATA,
        poison=ILLUSTRATED_POISON,
        code=code("reporting.py", "defenses/*.py"),
    output:
        png=report("results/figures/illustrations.png", category="Illustrations",
                   caption="../report/illustrations.rst"),
        pdf="results/figures/illustrations.pdf",
    log:
        "logs/render_illustrations.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense render-illustrations --data {input.data} --poison {input.poison} "
        "--out {output.png} {output.pdf} > {log} 2>&1"


rule render_privacy_figure:
    input:
        code=code("reporting.py", "privacy.py"),
    output:
        png=report("results/figures/figure4a.png", category="Figure 4a (DP-InstaHide)",
                   caption="../report/figure4a.rst"),
        pdf="results/figures/figure4a.pdf",
        csv="results/figures/figure4a.csv",
    log:
        "logs/render_privacy_figure.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense render-privacy-figure --out {output.png} {output.pdf} {output.csv} > {log} 2>&1"


rule compare_papers:
    input:
        metrics="results/metrics.csv",
        code=code("reporting.py", "metrics.py", "paper_numbers.csv"),
    output:
        csv=report("results/paper_comparison.csv", category="Paper comparison",
                   caption="../report/comparison.rst"),
        md="results/paper_comparison.md",
    params:
        experiments=grid.as_json(config["experiments"]),
        scale=SCALE,
    log:
        "logs/compare_papers.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense compare-papers --metrics {input.metrics} --experiments {params.experiments:q} "
        "--out {output.csv} {output.md} > {log} 2>&1"


rule resolved_config:
    output:
        "results/provenance/config.json",
    params:
        # The one rule that reads the whole config: it records it for reviewers.
        config=grid.as_json(config),
    log:
        "logs/resolved_config.log",
    conda:
        CONDA_ENV
    shell:
        "python -c 'import json, sys; json.dump(json.loads(sys.argv[1]), open(sys.argv[2], \"w\"), indent=2)' "
        "{params.config:q} {output} > {log} 2>&1"


rule provenance_manifest:
    input:
        WORKFLOW_OUTPUTS,
        "results/provenance/config.json",
    output:
        "results/provenance/manifest.tsv",
    log:
        "logs/provenance_manifest.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense write-manifest --out {output} {input} > {log} 2>&1"
