rule craft_poison:
    input:
        data=PREPARED_DATA,
        code=code("attacks/*.py", "io.py", "pipeline.py"),
    output:
        "results/poisons/{attack}/{slot}/{seed}.pt",
    params:
        attack=lambda w: grid.as_json(config["attacks"][w.attack]),
    threads: THREADS
    resources:
        gpu=1,
    log:
        "logs/craft_poison/{attack}/{slot}/{seed}.log",
    benchmark:
        "benchmarks/craft_poison/{attack}/{slot}/{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense craft-poison --data {input.data} --attack {wildcards.attack} "
        "--attack-spec {params.attack:q} --seed {wildcards.seed} --out {output} > {log} 2>&1"
