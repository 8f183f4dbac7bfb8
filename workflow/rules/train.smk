rule train_victim:
    input:
        data=PREPARED_DATA,
        poison=lambda w: poison_path(w.attack, w.defense, w.seed),
        sanitized=lambda w: sanitized_path(w.attack, w.defense, w.seed),
        extractor=lambda w: extractor_path(w.attack),
        code=code("augdefense.jobs.train"),
    output:
        out="results/runs/{attack}/{defense}/{seed}.json",
    params:
        attack=lambda w: w.attack,
        defense_name=lambda w: w.defense,
        defense=lambda w: spec(config["defenses"][w.defense]),
        recipe=lambda w: spec(attack_recipe(w.attack)),
        model=MODEL,
        runtime=RUNTIME,
        seed=lambda w: int(w.seed),
        checkpoint=checkpoint("attack", "defense", "seed"),
    threads: THREADS
    resources:
        **GPU_JOB,
        runtime=train_runtime,
    log:
        "logs/train_victim/{attack}/{defense}/{seed}.log",
    benchmark:
        "benchmarks/train_victim/{attack}/{defense}/{seed}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/train_victim.py"


rule train_feature_model:
    input:
        data=PREPARED_DATA,
        poison="results/poisons/{attack}/{slot}/{seed}.pt",
        extractor=lambda w: extractor_path(w.attack),
        code=code("augdefense.jobs.train"),
    output:
        out="results/feature_models/{attack}/{slot}/{seed}.pt",
    params:
        recipe=lambda w: spec(attack_recipe(w.attack)),
        model=MODEL,
        runtime=RUNTIME,
        seed=lambda w: int(w.seed),
        checkpoint=checkpoint("attack", "slot", "seed"),
    threads: THREADS
    resources:
        **GPU_JOB,
        runtime=train_runtime,
    log:
        "logs/train_feature_model/{attack}/{slot}/{seed}.log",
    benchmark:
        "benchmarks/train_feature_model/{attack}/{slot}/{seed}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/train_feature_model.py"


rule sanitize:
    input:
        data=PREPARED_DATA,
        poison=lambda w: poison_path(w.attack, w.defense, w.seed),
        feature_model=lambda w: feature_model_path(w.attack, w.defense, w.seed),
        code=code("augdefense.jobs.sanitize"),
    output:
        out="results/sanitize/{attack}/{defense}/{seed}.json",
    params:
        attack=lambda w: spec(config["attacks"][w.attack]),
        defense_name=lambda w: w.defense,
        defense=lambda w: spec(config["defenses"][w.defense]),
        recipe=lambda w: spec(attack_recipe(w.attack)),
        runtime=RUNTIME,
        seed=lambda w: int(w.seed),
    threads: THREADS
    resources:
        **GPU_JOB,
    log:
        "logs/sanitize/{attack}/{defense}/{seed}.log",
    benchmark:
        "benchmarks/sanitize/{attack}/{defense}/{seed}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/sanitize.py"
