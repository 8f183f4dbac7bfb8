rule train_victim:
    input:
        data=PREPARED_DATA,
        poison=lambda w: poison_path(w.attack, w.defense, w.seed),
        sanitized=lambda w: sanitized_path(w.attack, w.defense, w.seed),
        extractor=lambda w: extractor_path(w.attack),
        code=code("training.py", "models.py", "augment.py", "defenses/*.py", "gpu.py", "metrics.py",
                  "pipeline.py", "attacks/__init__.py", "io.py", "data.py"),
    output:
        "results/runs/{attack}/{defense}/{seed}.json",
    params:
        defense=lambda w: grid.as_json(config["defenses"][w.defense]),
        recipe=lambda w: grid.as_json(config["recipes"][config["attacks"][w.attack]["recipe"]]),
        model=grid.as_json(config["model"]),
        runtime=RUNTIME,
        sanitized=lambda w, input: f"--sanitized {input.sanitized}" if input.sanitized else "",
        extractor=lambda w, input: f"--extractor {input.extractor}" if input.extractor else "",
    threads: THREADS
    resources:
        gpu=1,
        runtime=train_runtime,
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
        "--seed {wildcards.seed} --threads {threads} --out {output} {params.sanitized} {params.extractor} "
        "--checkpoint scratch/checkpoints/{wildcards.attack}/{wildcards.defense}/{wildcards.seed}.pt "
        "> {log} 2>&1"


rule train_feature_model:
    input:
        data=PREPARED_DATA,
        poison="results/poisons/{attack}/{slot}/{seed}.pt",
        extractor=lambda w: extractor_path(w.attack),
        code=code("training.py", "models.py", "augment.py", "defenses/*.py", "gpu.py", "pipeline.py",
                  "attacks/__init__.py", "io.py", "data.py"),
    output:
        "results/feature_models/{attack}/{slot}/{seed}.pt",
    params:
        recipe=lambda w: grid.as_json(config["recipes"][config["attacks"][w.attack]["recipe"]]),
        model=grid.as_json(config["model"]),
        runtime=RUNTIME,
        extractor=lambda w, input: f"--extractor {input.extractor}" if input.extractor else "",
    threads: THREADS
    resources:
        gpu=1,
        runtime=train_runtime,
    log:
        "logs/train_feature_model/{attack}/{slot}/{seed}.log",
    benchmark:
        "benchmarks/train_feature_model/{attack}/{slot}/{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense train-feature-model --data {input.data} --poison {input.poison} "
        "--attack {wildcards.attack} --recipe {params.recipe:q} --model {params.model:q} "
        "--runtime {params.runtime:q} --seed {wildcards.seed} --threads {threads} --out {output} {params.extractor} "
        "--checkpoint scratch/checkpoints/feature_models/{wildcards.attack}/{wildcards.slot}/{wildcards.seed}.pt "
        "> {log} 2>&1"


rule sanitize:
    input:
        data=PREPARED_DATA,
        poison=lambda w: poison_path(w.attack, w.defense, w.seed),
        feature_model=lambda w: feature_model_path(w.attack, w.defense, w.seed),
        code=code("defenses/*.py", "pipeline.py", "models.py", "attacks/__init__.py", "io.py", "data.py"),
    output:
        "results/sanitize/{attack}/{defense}/{seed}.json",
    params:
        defense=lambda w: grid.as_json(config["defenses"][w.defense]),
        runtime=RUNTIME,
    threads: THREADS
    resources:
        gpu=1,
    log:
        "logs/sanitize/{attack}/{defense}/{seed}.log",
    benchmark:
        "benchmarks/sanitize/{attack}/{defense}/{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense sanitize --data {input.data} --poison {input.poison} "
        "--feature-model {input.feature_model} --defense {wildcards.defense} --defense-spec {params.defense:q} "
        "--runtime {params.runtime:q} --seed {wildcards.seed} --threads {threads} --out {output} > {log} 2>&1"
