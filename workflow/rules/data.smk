rule prepare_data:
    input:
        code=code("augdefense.data"),
    output:
        out="resources/prepared/{dataset}.pt",
    params:
        spec=lambda w: spec(DATASETS[w.dataset]),
    threads: THREADS
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "benchmarks/prepare_data/{dataset}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/prepare_data.py"
