"""One function per workflow rule. Each validates its inputs before spending compute, and writes
its outputs atomically (see ``augdefense.io``)."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

log = logging.getLogger("augdefense")


def prepare_data(spec: dict, out: str | Path) -> None:
    from augdefense import data

    dataset = data.prepare(spec, out)
    log.info("prepared %s: train %s, test %s, %d classes -> %s", spec.get("source"),
             tuple(dataset.train_images.shape), tuple(dataset.test_images.shape), dataset.num_classes, out)


def craft_poison(data_path: str | Path, attack_name: str, attack_spec: dict, seed: int, out: str | Path) -> None:
    from augdefense import attacks, data
    from augdefense.io import save_tensors

    attack = attacks.build(attack_spec, attack_name)
    dataset = data.load(data_path)
    poison = attack.craft(dataset, seed)
    save_tensors(out, poison)
    log.info("crafted %s seed %d: %s -> %s", attack_name, seed, poison["info"], out)


def train_victim(data_path: str | Path, poison_path: str | Path, attack_name: str, defense_name: str,
                 defense_spec: dict, recipe_spec: dict, model_spec: dict, runtime_spec: dict, seed: int,
                 threads: int, out: str | Path, checkpoint: str | Path | None = None) -> dict:
    import torch

    from augdefense import attacks, data, defenses, gpu, models
    from augdefense.config import as_json
    from augdefense.io import sha256, write_json
    from augdefense.metrics import run_metrics
    from augdefense.training import Checkpointer, Normalizer, Recipe, Runtime, predict, seed_everything, train

    recipe = Recipe.from_spec(recipe_spec, f"recipe of attack '{attack_name}'")
    runtime = Runtime.from_spec(runtime_spec)
    dataset = data.load(data_path)
    defense = defenses.build(defense_spec, dataset.num_classes, name=defense_name, seed=seed)
    channels, size = dataset.image_shape[0], dataset.image_shape[-1]
    models.build(model_spec, channels, dataset.num_classes, size)  # fail on a bad model entry now
    poison = attacks.load_poison(poison_path, dataset.image_shape, len(dataset.train_labels), dataset.num_classes)

    torch.set_num_threads(threads)
    seed_everything(seed, runtime.deterministic)
    model = models.build(model_spec, channels, dataset.num_classes, size)
    images, labels = attacks.apply_poison(dataset.train_images, dataset.train_labels, poison)
    normalizer = Normalizer(dataset.mean, dataset.std)
    keep = torch.ones(len(dataset.test_labels), dtype=torch.bool)
    keep[poison["clean_exclude"]] = False

    fingerprint = as_json({"data": sha256(data_path), "poison": sha256(poison_path), "defense": defense_spec,
                           "recipe": recipe_spec, "model": model_spec, "runtime": runtime_spec, "seed": seed,
                           "threads": threads})
    checkpointer = Checkpointer(Path(checkpoint) if checkpoint else None, runtime.checkpoint_every, fingerprint)

    with gpu.acquire(runtime.device) as slot:
        device = torch.device(slot.device)
        log.info("attack %s, defense %s, seed %d on %s (%d threads)", attack_name, defense.describe(), seed,
                 device, threads)
        start = time.perf_counter()
        history = train(model, images, labels, defense, recipe, normalizer, device, seed, runtime.amp,
                        checkpointer)
        train_seconds = time.perf_counter() - start
        clean_probs = predict(model, dataset.test_images[keep], normalizer, device, runtime.eval_batch_size, runtime.amp)
        eval_probs = predict(model, poison["eval_images"], normalizer, device, runtime.eval_batch_size, runtime.amp)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    record = {
        "attack": attack_name, "defense": defense_name, "seed": seed,
        **run_metrics(clean_probs, dataset.test_labels[keep], eval_probs, poison["eval_goals"]),
        **{k: v for k, v in poison["info"].items() if k not in ("attack", "seed")},
        "attack_type": poison["info"].get("type"), "defense_type": defense.type_name,
        "epochs": recipe.epochs, "final_train_loss": history[-1]["loss"],
        "train_seconds": round(train_seconds, 2), "device": str(device), "device_name": device_name,
    }
    record.pop("type", None)
    write_json(out, record)
    checkpointer.clear()
    log.info("%s", record)
    return record
