rule pretrain_extractor:
    input:
        data=lambda w: pretraining_data(w.recipe, w.pretraining),
        code=code("augdefense.jobs.train"),
    output:
        out="results/extractors/{recipe}/{pretraining}.pt",
    params:
        recipe=lambda w: spec(config["recipes"][w.recipe]),
        pretraining=lambda w: spec(pretraining(w.recipe, w.pretraining)),
        model=MODEL,
        runtime=RUNTIME,
        seed=0,
        checkpoint=checkpoint("recipe", "pretraining"),
    threads: THREADS
    resources:
        **GPU_JOB,
        runtime=lambda w, attempt: recipe_runtime(w.recipe, attempt),
    log:
        "logs/pretrain_extractor/{recipe}/{pretraining}.log",
    benchmark:
        "benchmarks/pretrain_extractor/{recipe}/{pretraining}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/pretrain_extractor.py"


rule train_crafting_model:
    input:
        data=PREPARED_DATA,
        code=code("augdefense.jobs.train"),
    output:
        out="results/crafting_models/{recipe}/{slot}/{seed}.pt",
    params:
        defense_name=lambda w: w.slot,
        defense=lambda w: spec(slot_defense(w.slot)),
        recipe=lambda w: spec(config["recipes"][w.recipe]),
        model=MODEL,
        runtime=RUNTIME,
        seed=lambda w: int(w.seed),
        checkpoint=checkpoint("recipe", "slot", "seed"),
    threads: THREADS
    resources:
        **GPU_JOB,
        runtime=lambda w, attempt: recipe_runtime(w.recipe, attempt),
    log:
        "logs/train_crafting_model/{recipe}/{slot}/{seed}.log",
    benchmark:
        "benchmarks/train_crafting_model/{recipe}/{slot}/{seed}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/train_crafting_model.py"


rule craft_poison:
    input:
        data=PREPARED_DATA,
        crafting_model=lambda w: crafting_model_path(w.attack, w.slot, w.seed),
        code=code("augdefense.jobs.craft"),
    output:
        out="results/poisons/{attack}/{slot}/{seed}.pt",
    params:
        attack_name=lambda w: w.attack,
        attack=lambda w: spec(config["attacks"][w.attack]),
        seed=lambda w: int(w.seed),
        # Only what crafting reads: the patch attack needs no model, recipe or defense.
        defense_name=lambda w: w.slot,
        defense=lambda w: spec(slot_defense(w.slot)) if crafting_model_path(w.attack, w.slot, w.seed) else None,
        recipe=lambda w: spec(attack_recipe(w.attack)) if crafting_model_path(w.attack, w.slot, w.seed) else None,
        runtime=RUNTIME,
    threads: THREADS
    resources:
        **GPU_JOB,
    log:
        "logs/craft_poison/{attack}/{slot}/{seed}.log",
    benchmark:
        "benchmarks/craft_poison/{attack}/{slot}/{seed}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/craft_poison.py"
