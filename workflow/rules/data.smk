rule prepare_data:
    input:
        code=code("data.py", "io.py"),
    output:
        PREPARED_DATA,
    params:
        spec=grid.as_json(config["data"]),
    log:
        f"logs/prepare_data/{DATASET}.log",
    benchmark:
        f"benchmarks/prepare_data/{DATASET}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense prepare-data --spec {params.spec:q} --out {output} > {log} 2>&1"
