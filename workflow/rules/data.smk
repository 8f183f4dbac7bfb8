rule prepare_data:
    input:
        code=code("augdefense.data"),
    output:
        out=PREPARED_DATA,
    params:
        spec=spec(config["data"]),
    log:
        f"logs/prepare_data/{DATASET}.log",
    benchmark:
        f"benchmarks/prepare_data/{DATASET}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/prepare_data.py"
