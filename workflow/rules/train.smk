rule train_victim:
    input:
        data=PREPARED_DATA,
        poison=lambda w: poison_path(w.attack, w.defense, w.seed),
        code=code("training.py", "models.py", "augment.py", "defenses/*.py", "gpu.py", "metrics.py",
                  "pipeline.py", "attacks/__init__.py", "io.py", "data.py"),
    output:
        "results/runs/{attack}/{defense}/{seed}.json",
    params:
        defense=lambda w: grid.as_json(config["defenses"][w.defense]),
        recipe=lambda w: grid.as_json(config["recipes"][config["attacks"][w.attack]["recipe"]]),
        model=grid.as_json(config["model"]),
        runtime=RUNTIME,
    threads: THREADS
    resources:
        gpu=1,
    log:
        "logs/train_victim/{attack}/{defense}/{seed}.log",
    benchmark:
        "benchmarks/train_victim/{attack}/{defense}/{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense train-victim --data {input.data} --poison {input.poison} "
        "--attack {wildcards.attack} --defense {wildcards.defense} --defense-spec {params.defense:q} "
        "--recipe {params.recipe:q} --model {params.model:q} --runtime {params.runtime:q} "
        "--seed {wildcards.seed} --threads {threads} --out {output} "
        "--checkpoint scratch/checkpoints/{wildcards.attack}/{wildcards.defense}/{wildcards.seed}.pt "
        "> {log} 2>&1"
