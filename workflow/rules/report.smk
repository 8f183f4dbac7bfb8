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
        csv=report("results/tables/{table}.csv", category="Tables", subcategory="{table}",
                   caption="../report/table.rst"),
        md="results/tables/{table}.md",
    params:
        experiment=lambda w: grid.as_json(config["experiments"][w.table]),
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
        png=report("results/figures/{table}.png", category="Figures", subcategory="{table}",
                   caption="../report/figure.rst"),
        pdf="results/figures/{table}.pdf",
    params:
        experiment=lambda w: grid.as_json(config["experiments"][w.table]),
    log:
        "logs/render_figures/{table}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense render-figure --metrics {input.metrics} --table {wildcards.table} "
        "--experiment {params.experiment:q} --out {output.png} {output.pdf} > {log} 2>&1"
