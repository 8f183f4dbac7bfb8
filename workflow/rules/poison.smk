rule pretrain_extractor:
    input:
        data=PREPARED_DATA,
        code=code("training.py", "models.py", "augment.py", "defenses/*.py", "gpu.py", "pipeline.py",
                  "attacks/__init__.py", "io.py", "data.py"),
    output:
        "results/extractors/{recipe}/share{share}.pt",
    params:
        pretrain=lambda w: grid.as_json(config["recipes"][w.recipe]),
        transfer=lambda w: grid.as_json({"pretrain_recipe": w.recipe, "pretrain_share": float(w.share)}),
        model=grid.as_json(config["model"]),
        runtime=RUNTIME,
    threads: THREADS
    resources:
        gpu=1,
        runtime=lambda w, attempt: recipe_runtime(w.recipe, attempt),
    log:
        "logs/pretrain_extractor/{recipe}/share{share}.log",
    benchmark:
        "benchmarks/pretrain_extractor/{recipe}/share{share}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense pretrain-extractor --data {input.data} --recipe-name {wildcards.recipe} "
        "--pretrain-recipe {params.pretrain:q} --transfer {params.transfer:q} --model {params.model:q} "
        "--runtime {params.runtime:q} --threads {threads} --out {output} "
        "--checkpoint scratch/checkpoints/extractors/{wildcards.recipe}/share{wildcards.share}.pt > {log} 2>&1"


rule train_crafting_model:
    input:
        data=PREPARED_DATA,
        code=code("training.py", "models.py", "augment.py", "defenses/*.py", "gpu.py", "pipeline.py",
                  "attacks/__init__.py", "io.py", "data.py"),
    output:
        "results/crafting_models/{recipe}/{slot}/{seed}.pt",
    params:
        defense=lambda w: grid.as_json(slot_defense(w.slot)),
        recipe=lambda w: grid.as_json(config["recipes"][w.recipe]),
        model=grid.as_json(config["model"]),
        runtime=RUNTIME,
    threads: THREADS
    resources:
        gpu=1,
        runtime=lambda w, attempt: recipe_runtime(w.recipe, attempt),
    log:
        "logs/train_crafting_model/{recipe}/{slot}/{seed}.log",
    benchmark:
        "benchmarks/train_crafting_model/{recipe}/{slot}/{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m augdefense train-crafting-model --data {input.data} --defense {wildcards.slot} "
        "--defense-spec {params.defense:q} --recipe {params.recipe:q} --model {params.model:q} "
        "--runtime {params.runtime:q} --seed {wildcards.seed} --threads {threads} --out {output} "
        "--checkpoint scratch/checkpoints/crafting_models/{wildcards.recipe}/{wildcards.slot}/{wildcards.seed}.pt "
        "> {log} 2>&1"


rule craft_poison:
    input:
        data=PREPARED_DATA,
        crafting_model=lambda w: crafting_model_path(w.attack, w.slot, w.seed),
        code=code("attacks/*.py", "io.py", "pipeline.py", "defenses/*.py"),
    output:
        "results/poisons/{attack}/{slot}/{seed}.pt",
    params:
        attack=lambda w: grid.as_json(config["attacks"][w.attack]),
        # Only what crafting reads: the patch attack needs no model, recipe or defense.
        defense=lambda w: grid.as_json(slot_defense(w.slot) if crafting_model_path(w.attack, w.slot, w.seed)
                                       else {"type": "none"}),
        recipe=lambda w: grid.as_json(attack_recipe(w.attack) if crafting_model_path(w.attack, w.slot, w.seed)
                                      else {}),
        runtime=RUNTIME,
        crafting_model=lambda w, input: f"--crafting-model {input.crafting_model}" if input.crafting_model else "",
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
        "--attack-spec {params.attack:q} --seed {wildcards.seed} {params.crafting_model} "
        "--defense {wildcards.slot} --defense-spec {params.defense:q} --recipe {params.recipe:q} "
        "--runtime {params.runtime:q} --threads {threads} --out {output} > {log} 2>&1"
