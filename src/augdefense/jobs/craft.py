"""The crafting job: one attack's poison for one seed."""

from __future__ import annotations

import logging

from augdefense import timing
from augdefense.errors import ConfigError

log = logging.getLogger("augdefense")


def craft_poison(
    *,
    data: str,
    attack_name: str,
    attack: dict,
    seed: int,
    out: str,
    crafting_model: str | None = None,
    defense_name: str = "none",
    defense: dict | None = None,
    recipe: dict | None = None,
    runtime: dict | None = None,
    threads: int = 1,
) -> None:
    """Craft one attack's poison; an optimisation-based attack crafts against ``crafting_model``
    (and, when adaptive, through the defense it was trained under)."""
    import torch

    from augdefense import attacks, defenses, gpu, models
    from augdefense import data as datasets
    from augdefense.attacks.base import CraftingContext
    from augdefense.io import save_tensors
    from augdefense.training import Recipe, Runtime, normalizer_for, seed_everything

    built = attacks.build(attack, attack_name)
    with timing.phase("load"):
        dataset = datasets.load(data)
    if not built.needs_model:
        with timing.phase("craft"):
            poison = built.craft(dataset, seed)
    else:
        if crafting_model is None:
            raise ConfigError(
                f"attacks.{attack_name}: type '{built.type_name}' crafts against a trained model "
                "(input 'crafting_model')"
            )
        recipe_ = Recipe.from_spec(recipe or {}, f"recipe of attack '{attack_name}'")
        runtime_ = Runtime.from_spec(runtime or {})
        adaptive_defense = None
        if built.spec.get("adaptive", False):
            adaptive_defense = defenses.build(
                defense or {"type": "none"}, dataset.num_classes, name=defense_name, seed=seed, data_mean=dataset.mean
            )
        # An extractor pretrained on another dataset has its own classes: its head is not loaded.
        with timing.phase("load"):
            model = models.load(crafting_model, dataset, head_may_differ=recipe_.transfer is not None)
        finetune = None
        if recipe_.transfer:  # craft inside the victim's fine-tuning set, against the pretrained extractor
            _, finetune = datasets.transfer_split(dataset.train_labels, recipe_.transfer)
            dataset = datasets.subset(dataset, finetune)
        torch.set_num_threads(threads)
        # Crafting's differentiable shift (grid_sample) has no deterministic CUDA backward: warn, not fail.
        seed_everything(seed, runtime_.deterministic, warn_only=True)
        # The extractor is crafted against as the victims fine-tune it (the benchmark's constants); a
        # model trained with a crafting_recipe as it was trained (the data's normalisation).
        normalizer = normalizer_for(dataset, recipe_ if built.spec.get("crafting_recipe") is None else None)
        with gpu.acquire(runtime_.device, jobs_per_device=runtime_.jobs_per_gpu) as slot:
            device = torch.device(slot.device)
            model.eval().to(device)
            for p in model.parameters():
                p.requires_grad_(True)
            context = CraftingContext(model, normalizer.to(device), device, adaptive_defense, recipe_)
            with timing.phase("craft"):
                poison = built.craft(dataset, seed, context)
            # The time goes to the log and the sidecar, not the artifact: a seed's poison is the same bytes.
            log.info("crafting took %.1f s", timing.recorded()["craft"])
            poison["info"]["crafting_defense"] = defense_name if adaptive_defense is not None else "none"
        if finetune is not None:  # indices into the full training set; the victim trains on the split
            poison["train_indices"] = finetune[poison["train_indices"]]
            poison["train_subset"] = finetune
    with timing.phase("write"):
        save_tensors(out, poison)
    log.info("crafted %s seed %d: %s -> %s", attack_name, seed, poison["info"], out)
