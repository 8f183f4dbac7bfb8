"""The filtering job: a filter defense run on the feature model's features of the poisoned set."""

from __future__ import annotations

import logging

from augdefense import timing
from augdefense.config import assumed_poisons
from augdefense.errors import ConfigError

log = logging.getLogger("augdefense")


def sanitize(
    *,
    data: str,
    poison: str,
    feature_model: str,
    attack: dict,
    defense_name: str,
    defense: dict,
    runtime: dict,
    seed: int,
    out: str,
    recipe: dict | None = None,
    threads: int = 1,
) -> dict:
    """Run a filter defense on the penultimate-layer features of the poisoned training set, telling
    it the attack's budget (``config.assumed_poisons``), never where the poisons are; write what it
    removes and relabels, and how many of the poisons it caught. The feature model was trained with
    the attack's ``recipe``: its images are normalised as that recipe's training normalised them."""
    import torch

    from augdefense import data as datasets
    from augdefense import defenses, gpu, models, poisons
    from augdefense.io import write_json
    from augdefense.training import Recipe, Runtime, normalizer_for

    runtime_ = Runtime.from_spec(runtime)
    with timing.phase("load"):
        dataset = datasets.load(data)
        built = defenses.build(defense, dataset.num_classes, name=defense_name, seed=seed)
        if not getattr(built, "is_filter", False):
            raise ConfigError(f"defenses.{defense_name}: type '{built.type_name}' is not a filter defense")
        artifact = poisons.load(poison, dataset.image_shape, len(dataset.train_labels), dataset.num_classes)
        model = models.load(feature_model, dataset)

    images, labels = poisons.training_set(dataset, artifact)
    torch.set_num_threads(threads)
    normalizer = normalizer_for(dataset, Recipe.from_spec(recipe) if recipe is not None else None)
    with (
        gpu.acquire(runtime_.device, jobs_per_device=runtime_.jobs_per_gpu) as slot,
        torch.inference_mode(),
        timing.phase("evaluate"),
    ):
        device = torch.device(slot.device)
        model.eval().to(device)
        normalizer.to(device)
        batch = runtime_.eval_batch_size
        features = torch.cat(
            [
                model.features(normalizer(x.to(device).float().div_(255))).float().cpu()
                for x in datasets.batches(images, batch, workers=runtime_.loader_workers)
            ]
        )
    budget = assumed_poisons(attack, len(labels), dataset.num_classes)
    with timing.phase("filter"):
        result = built.sanitize(features, labels, budget)
    removed = result["removed"].tolist()
    relabeled = torch.nonzero(result["labels"] != labels).flatten().tolist()
    positions = set(poisons.positions_in_training_set(artifact).tolist())
    caught = len(positions & set(removed))
    record = {
        "attack": artifact["info"].get("attack"),
        "defense": defense_name,
        "seed": seed,
        "removed": removed,
        "relabeled": [[i, int(result["labels"][i])] for i in relabeled],
        "n_removed": len(removed),
        "n_relabeled": len(relabeled),
        "n_poisons": len(positions),
        "n_poisons_removed": caught,
        "budget_assumed": budget,
        "filter_precision": caught / len(removed) if removed else None,
        "filter_recall": caught / len(positions) if positions else None,
    }
    with timing.phase("write"):
        write_json(out, record)
    log.info(
        "%s removed %d (%d of %d poisons), relabelled %d",
        defense_name,
        len(removed),
        caught,
        len(positions),
        len(relabeled),
    )
    return record
