"""One function per workflow rule. Each validates its inputs before spending compute, and writes
its outputs atomically (see ``augdefense.io``)."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from augdefense.config import pretrain_share

log = logging.getLogger("augdefense")


def prepare_data(spec: dict, out: str | Path) -> None:
    from augdefense import data

    dataset = data.prepare(spec, out)
    log.info("prepared %s: train %s, test %s, %d classes -> %s", spec.get("source"),
             tuple(dataset.train_images.shape), tuple(dataset.test_images.shape), dataset.num_classes, out)


def craft_poison(data_path: str | Path, attack_name: str, attack_spec: dict, seed: int, out: str | Path,
                 crafting_model: str | Path | None = None, defense_name: str = "none",
                 defense_spec: dict | None = None, recipe_spec: dict | None = None, runtime_spec: dict | None = None,
                 threads: int = 1) -> None:
    """Craft one attack's poison; an optimisation-based attack crafts against ``crafting_model``
    (and, when adaptive, through the defense it was trained under)."""
    import torch

    from augdefense import attacks, data, defenses, gpu
    from augdefense.attacks.base import CraftingContext
    from augdefense.errors import ConfigError
    from augdefense.io import save_tensors
    from augdefense.training import Normalizer, Recipe, Runtime, seed_everything

    attack = attacks.build(attack_spec, attack_name)
    dataset = data.load(data_path)
    if not attack.needs_model:
        poison = attack.craft(dataset, seed)
    else:
        if crafting_model is None:
            raise ConfigError(f"attacks.{attack_name}: type '{attack.type_name}' crafts against a trained model; "
                              "pass --crafting-model")
        recipe = Recipe.from_spec(recipe_spec or {}, f"recipe of attack '{attack_name}'")
        runtime = Runtime.from_spec(runtime_spec or {})
        defense = None
        if attack_spec.get("adaptive", False):
            defense = defenses.build(defense_spec or {"type": "none"}, dataset.num_classes, name=defense_name,
                                     seed=seed)
        model = load_model(crafting_model, dataset)
        finetune = None
        if recipe.transfer:  # craft inside the victim's fine-tuning split, against the pretrained extractor
            _, finetune = data.transfer_split(dataset.train_labels, pretrain_share(recipe.transfer))
            dataset = data.subset(dataset, finetune)
        torch.set_num_threads(threads)
        seed_everything(seed, runtime.deterministic)
        normalizer = Normalizer(dataset.mean, dataset.std)
        with gpu.acquire(runtime.device) as slot:
            device = torch.device(slot.device)
            model.eval().to(device)
            for p in model.parameters():
                p.requires_grad_(True)
            context = CraftingContext(model, normalizer.to(device), device, defense, recipe)
            start = time.perf_counter()
            poison = attack.craft(dataset, seed, context)
            poison["info"]["craft_seconds"] = round(time.perf_counter() - start, 2)
            poison["info"]["crafting_defense"] = defense_name if defense is not None else "none"
        if finetune is not None:  # indices into the full training set; the victim trains on the split
            poison["train_indices"] = finetune[poison["train_indices"]]
            poison["train_subset"] = finetune
    save_tensors(out, poison)
    log.info("crafted %s seed %d: %s -> %s", attack_name, seed, poison["info"], out)


def load_model(path: str | Path, dataset):
    """A model saved by train_crafting_model / train_feature_model, rebuilt from its own spec."""
    from augdefense import models
    from augdefense.errors import ArtifactError
    from augdefense.io import load_tensors

    saved = load_tensors(path, {"state_dict": dict, "model": dict})
    model = models.build(saved["model"], dataset.image_shape[0], dataset.num_classes, dataset.image_shape[-1])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit model {saved['model']}: {exc}") from None
    return model


@dataclass
class PoisonedTraining:
    """A validated training job on a poisoned training set (shared by victims and feature models)."""

    dataset: object
    poison: dict
    defense: object
    recipe: object
    runtime: object
    model_spec: dict
    fingerprint: str
    extractor: dict | None = None  # pretrained weights the victim starts from (transfer learning)

    @classmethod
    def load(cls, data_path, poison_path, defense_name: str, defense_spec: dict, recipe_spec: dict,
             model_spec: dict, runtime_spec: dict, seed: int, threads: int, where: str,
             extractor_path=None) -> "PoisonedTraining":
        from augdefense import attacks, data, defenses, models
        from augdefense.config import as_json
        from augdefense.io import sha256
        from augdefense.training import Recipe, Runtime

        recipe = Recipe.from_spec(recipe_spec, where)
        runtime = Runtime.from_spec(runtime_spec)
        dataset = data.load(data_path)
        defense = defenses.build(defense_spec, dataset.num_classes, name=defense_name, seed=seed)
        probe = models.build(model_spec, dataset.image_shape[0], dataset.num_classes, dataset.image_shape[-1])
        defense.check_model(probe)
        if poison_path is None:  # clean training (a crafting model)
            poison = attacks.no_poison(dataset.image_shape)
        else:
            poison = attacks.load_poison(poison_path, dataset.image_shape, len(dataset.train_labels),
                                         dataset.num_classes)
        extractor = None
        if recipe.transfer:
            from augdefense.errors import ConfigError

            if extractor_path is None:
                raise ConfigError(f"{where}: a transfer recipe needs the pretrained extractor (--extractor)")
            extractor = load_model(extractor_path, dataset).state_dict()
        fingerprint = as_json({"data": sha256(data_path), "poison": sha256(poison_path) if poison_path else None,
                               "extractor": sha256(extractor_path) if extractor_path else None, "defense": defense_spec,
                               "recipe": recipe_spec, "model": model_spec, "runtime": runtime_spec, "seed": seed,
                               "threads": threads})
        return cls(dataset, poison, defense, recipe, runtime, model_spec, fingerprint, extractor)

    def build_model(self):
        from augdefense import models

        ds = self.dataset
        return models.build(self.model_spec, ds.image_shape[0], ds.num_classes, ds.image_shape[-1])

    def training_set(self, sanitized: dict | None = None):
        """The poisoned training set, minus what a filter removed and with what it relabelled."""
        import torch

        images, labels = poisoned_training_set(self.dataset, self.poison)
        if sanitized is None:
            return images, labels
        for index, label in sanitized["relabeled"]:
            labels[index] = label
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[torch.tensor(sanitized["removed"], dtype=torch.long)] = False
        return images[keep], labels[keep]

    def fit(self, seed: int, threads: int, checkpoint, sanitized: dict | None = None) -> dict:
        """Train from scratch (resuming from ``checkpoint`` when it holds this run's state) and
        evaluate. Returns the model, its history, probabilities and where it ran."""
        import torch

        from augdefense import gpu
        from augdefense.training import Checkpointer, Normalizer, predict, seed_everything, train

        torch.set_num_threads(threads)
        seed_everything(seed, self.runtime.deterministic)
        model = self.build_model()
        if self.extractor is not None:
            from augdefense.training import start_from_extractor

            start_from_extractor(model, self.extractor, self.recipe.last_layer_only)
        images, labels = self.training_set(sanitized)
        normalizer = Normalizer(self.dataset.mean, self.dataset.std)
        checkpointer = Checkpointer(Path(checkpoint) if checkpoint else None, self.runtime.checkpoint_every,
                                    self.fingerprint)
        keep = torch.ones(len(self.dataset.test_labels), dtype=torch.bool)
        keep[self.poison["clean_exclude"]] = False
        rt = self.runtime
        with gpu.acquire(rt.device) as slot:
            device = torch.device(slot.device)
            log.info("defense %s, seed %d on %s (%d threads), %d training images", self.defense.describe(), seed,
                     device, threads, len(labels))
            start = time.perf_counter()
            history = train(model, images, labels, self.defense, self.recipe, normalizer, device, seed, rt.amp,
                            checkpointer, compile_model=rt.compile)
            seconds = time.perf_counter() - start
            clean = predict(model, self.dataset.test_images[keep], normalizer, device, rt.eval_batch_size, rt.amp)
            attack = predict(model, self.poison["eval_images"], normalizer, device, rt.eval_batch_size, rt.amp)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        return {"model": model.cpu(), "history": history, "n_train": len(labels), "clean_probs": clean, "clean_labels":
                self.dataset.test_labels[keep], "eval_probs": attack, "seconds": seconds, "device": str(device),
                "device_name": name, "checkpointer": checkpointer}


def poisoned_training_set(dataset, poison: dict):
    """The training set a victim sees: the poisons put in place, restricted to the fine-tuning
    split when the attack crafted in one (transfer learning)."""
    from augdefense import attacks

    images, labels = attacks.apply_poison(dataset.train_images, dataset.train_labels, poison)
    if "train_subset" in poison:
        return images[poison["train_subset"]], labels[poison["train_subset"]]
    return images, labels


def train_victim(data_path: str | Path, poison_path: str | Path, attack_name: str, defense_name: str,
                 defense_spec: dict, recipe_spec: dict, model_spec: dict, runtime_spec: dict, seed: int,
                 threads: int, out: str | Path, checkpoint: str | Path | None = None,
                 sanitized_path: str | Path | None = None, extractor_path: str | Path | None = None) -> dict:
    from augdefense.io import read_json, write_json
    from augdefense.metrics import run_metrics

    job = PoisonedTraining.load(data_path, poison_path, defense_name, defense_spec, recipe_spec, model_spec,
                                runtime_spec, seed, threads, f"recipe of attack '{attack_name}'", extractor_path)
    sanitized = _check_sanitized(read_json(sanitized_path), sanitized_path, job) if sanitized_path else None
    if getattr(job.defense, "is_filter", False) and sanitized is None:
        from augdefense.errors import ConfigError

        raise ConfigError(f"defense '{defense_name}' is a filter: it needs --sanitized (the sanitize step's output)")
    result = job.fit(seed, threads, checkpoint, sanitized)
    info = job.poison["info"]
    record = {
        "attack": attack_name, "defense": defense_name, "seed": seed,
        **run_metrics(result["clean_probs"], result["clean_labels"], result["eval_probs"], job.poison["eval_goals"]),
        **{k: v for k, v in info.items() if k not in ("attack", "seed", "type")},
        "attack_type": info.get("type"), "defense_type": job.defense.type_name,
        "epochs": job.recipe.epochs, "final_train_loss": result["history"][-1]["loss"],
        "train_seconds": round(result["seconds"], 2), "device": result["device"], "device_name": result["device_name"],
    }
    if sanitized is not None:
        record.update({k: sanitized[k] for k in ("n_removed", "n_relabeled", "filter_precision", "filter_recall")})
    record.update(job.defense.privacy_record(result["n_train"], job.dataset.image_shape, job.recipe.epochs,
                                             job.recipe.batch_size))
    write_json(out, record)
    result["checkpointer"].clear()
    log.info("%s", record)
    return record


def train_feature_model(data_path: str | Path, poison_path: str | Path, attack_name: str, recipe_spec: dict,
                        model_spec: dict, runtime_spec: dict, seed: int, threads: int, out: str | Path,
                        checkpoint: str | Path | None = None, extractor_path: str | Path | None = None) -> None:
    """The filters' feature extractor: a model trained on the poisoned set with no defense."""
    from augdefense.io import save_tensors

    job = PoisonedTraining.load(data_path, poison_path, "none", {"type": "none"}, recipe_spec, model_spec,
                                runtime_spec, seed, threads, f"recipe of attack '{attack_name}'", extractor_path)
    result = job.fit(seed, threads, checkpoint)
    save_tensors(out, {"state_dict": result["model"].state_dict(), "model": model_spec,
                       "fingerprint": job.fingerprint})
    result["checkpointer"].clear()
    log.info("feature model for %s seed %d -> %s", attack_name, seed, out)


def train_crafting_model(data_path: str | Path, defense_name: str, defense_spec: dict, recipe_spec: dict,
                         model_spec: dict, runtime_spec: dict, seed: int, threads: int, out: str | Path,
                         checkpoint: str | Path | None = None) -> None:
    """The model an optimisation-based attack crafts against: trained on clean data, under the
    victim's defense for an adaptive attack (``none`` otherwise). Its seed differs from the
    victims' (config.crafting_seed), so the victim is a fresh initialisation, as in the papers."""
    from augdefense.config import crafting_seed
    from augdefense.io import save_tensors

    job = PoisonedTraining.load(data_path, None, defense_name, defense_spec, recipe_spec, model_spec,
                                runtime_spec, crafting_seed(seed), threads, "crafting model recipe")
    if getattr(job.defense, "is_filter", False):
        from augdefense.errors import ConfigError

        raise ConfigError(f"defense '{defense_name}' is a filter: an adaptive attack has no training-time "
                          "defense to adapt to")
    result = job.fit(crafting_seed(seed), threads, checkpoint)
    clean_acc = float((result["clean_probs"].argmax(1) == result["clean_labels"]).float().mean())
    save_tensors(out, {"state_dict": result["model"].state_dict(), "model": model_spec,
                       "fingerprint": job.fingerprint, "clean_acc": clean_acc})
    result["checkpointer"].clear()
    log.info("crafting model under %s, seed %d (clean accuracy %.4f) -> %s", defense_name, seed, clean_acc, out)


def pretrain_extractor(data_path: str | Path, recipe_name: str, pretrain_recipe_spec: dict, transfer_spec: dict,
                       model_spec: dict, runtime_spec: dict, threads: int, out: str | Path,
                       checkpoint: str | Path | None = None) -> None:
    """The transfer-learning setting's feature extractor: trained on clean data of the pretraining
    split (disjoint from the fine-tuning split the attacks poison), once per pretraining recipe and
    share, shared by every seed and every transfer recipe that pretrains alike."""
    import torch

    from augdefense import data
    from augdefense.io import save_tensors

    job = PoisonedTraining.load(data_path, None, "none", {"type": "none"}, pretrain_recipe_spec, model_spec,
                                runtime_spec, 0, threads, f"recipes.{transfer_spec['pretrain_recipe']}")
    pretrain, _ = data.transfer_split(job.dataset.train_labels, pretrain_share(transfer_spec))
    job.poison["train_subset"] = pretrain
    result = job.fit(0, threads, checkpoint)
    clean_acc = float((result["clean_probs"].argmax(1) == result["clean_labels"]).float().mean())
    save_tensors(out, {"state_dict": result["model"].state_dict(), "model": model_spec, "clean_acc": clean_acc,
                       "pretrain_indices": pretrain.to(torch.long), "fingerprint": job.fingerprint})
    result["checkpointer"].clear()
    log.info("extractor (pretraining recipe %s): %d pretraining images, clean accuracy %.4f -> %s", recipe_name,
             len(pretrain), clean_acc, out)


def sanitize(data_path: str | Path, poison_path: str | Path, model_path: str | Path, defense_name: str,
             defense_spec: dict, runtime_spec: dict, seed: int, threads: int, out: str | Path) -> dict:
    """Run a filter defense on the penultimate-layer features of the poisoned training set."""
    import torch

    from augdefense import attacks, data, defenses, gpu
    from augdefense.errors import ConfigError
    from augdefense.io import write_json
    from augdefense.training import Normalizer, Runtime

    runtime = Runtime.from_spec(runtime_spec)
    dataset = data.load(data_path)
    defense = defenses.build(defense_spec, dataset.num_classes, name=defense_name, seed=seed)
    if not getattr(defense, "is_filter", False):
        raise ConfigError(f"defenses.{defense_name}: type '{defense.type_name}' is not a filter defense")
    poison = attacks.load_poison(poison_path, dataset.image_shape, len(dataset.train_labels), dataset.num_classes)
    model = load_model(model_path, dataset)

    images, labels = poisoned_training_set(dataset, poison)
    torch.set_num_threads(threads)
    normalizer = Normalizer(dataset.mean, dataset.std)
    with gpu.acquire(runtime.device) as slot, torch.inference_mode():
        device = torch.device(slot.device)
        model.eval().to(device)
        normalizer.to(device)
        features = torch.cat([
            model.features(normalizer(images[i:i + runtime.eval_batch_size].to(device).float().div_(255))).float().cpu()
            for i in range(0, len(images), runtime.eval_batch_size)])
    expected = torch.bincount(poison["train_labels"], minlength=dataset.num_classes)
    result = defense.sanitize(features, labels, {c: int(n) for c, n in enumerate(expected.tolist())})
    removed = result["removed"].tolist()
    relabeled = torch.nonzero(result["labels"] != labels).flatten().tolist()
    # Poison positions in the training set the filter saw (the fine-tuning split, if any).
    positions = poison["train_indices"]
    if "train_subset" in poison:
        positions = torch.searchsorted(poison["train_subset"], positions)
    poisons = set(positions.tolist())
    caught = len(poisons & set(removed))
    record = {
        "attack": poison["info"].get("attack"), "defense": defense_name, "seed": seed,
        "removed": removed, "relabeled": [[i, int(result["labels"][i])] for i in relabeled],
        "n_removed": len(removed), "n_relabeled": len(relabeled), "n_poisons": len(poisons),
        "n_poisons_removed": caught,
        "filter_precision": caught / len(removed) if removed else None,
        "filter_recall": caught / len(poisons) if poisons else None,
    }
    write_json(out, record)
    log.info("%s removed %d (%d of %d poisons), relabelled %d", defense_name, len(removed), caught, len(poisons),
             len(relabeled))
    return record


def _check_sanitized(record: dict, path, job: PoisonedTraining) -> dict:
    from augdefense.errors import ArtifactError

    n = len(job.dataset.train_labels)
    if not isinstance(record, dict) or not {"removed", "relabeled", "n_removed"} <= set(record):
        raise ArtifactError(f"{path}: not a sanitize record (needs 'removed', 'relabeled', 'n_removed')")
    if any(not isinstance(i, int) or not 0 <= i < n for i in record["removed"]):
        raise ArtifactError(f"{path}: 'removed' holds indices outside 0..{n - 1}")
    return record
