"""The training jobs: a victim under a defense, the filters' feature model, the crafting model an
attack optimises against, and the transfer setting's pretrained extractor. Each validates what it
reads before spending compute and writes its outputs atomically (``augdefense.io``)."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from augdefense import timing
from augdefense.config import crafting_seed
from augdefense.errors import ArtifactError, ConfigError

log = logging.getLogger("augdefense")


@dataclass(frozen=True, kw_only=True)
class TrainingJob:
    """Everything one training run depends on: the prepared data, the poison it trains on (none
    for clean training), the model, recipe, runtime and defense entries, the seed, and where it
    keeps its resumable state. A rule declares these by name (``augdefense.runner``)."""

    data: str
    model: dict
    recipe: dict
    runtime: dict
    seed: int
    defense_name: str = "none"
    defense: dict = field(default_factory=lambda: {"type": "none"})
    poison: str | None = None
    extractor: str | None = None  # the pretrained extractor a transfer recipe fine-tunes
    threads: int = 1
    checkpoint: str | None = None  # scratch file for resumable state (not an output)


@dataclass
class TrainingRun:
    """A ``TrainingJob`` with its inputs loaded and checked: the dataset, poison, defense, recipe
    and runtime, ready to ``fit``."""

    job: TrainingJob
    dataset: object
    poison: dict
    defense: object
    recipe: object
    runtime: object
    extractor: dict | None = None  # pretrained weights the model starts from (transfer learning)

    @classmethod
    def prepare(cls, job: TrainingJob) -> TrainingRun:
        with timing.phase("load"):
            return cls._prepare(job)

    @classmethod
    def _prepare(cls, job: TrainingJob) -> TrainingRun:
        from augdefense import data, defenses, models, poisons
        from augdefense.training import Recipe, Runtime

        recipe = Recipe.from_spec(job.recipe)
        runtime = Runtime.from_spec(job.runtime)
        dataset = data.load(job.data)
        defense = defenses.build(
            job.defense, dataset.num_classes, name=job.defense_name, seed=job.seed, data_mean=dataset.mean
        )
        defense.check_model(
            models.build(job.model, dataset.image_shape[0], dataset.num_classes, dataset.image_shape[-1])
        )
        if job.poison is None:
            poison = poisons.none(dataset.image_shape)
        else:
            poison = poisons.load(job.poison, dataset.image_shape, len(dataset.train_labels), dataset.num_classes)
        extractor = None
        if recipe.transfer:
            if job.extractor is None:
                raise ConfigError("recipe: a transfer recipe needs the pretrained extractor (input 'extractor')")
            extractor = models.load(job.extractor, dataset, head_may_differ=True).state_dict()
        return cls(job, dataset, poison, defense, recipe, runtime, extractor)

    def fingerprint(self, train_indices=None, sanitized: dict | None = None) -> str:
        """What the run's result depends on: every input (by sha256, the filter's record included),
        config entry and the seed; a checkpoint written under another fingerprint is ignored. (The
        defense's name and the checkpoint's path change no number.)"""
        import hashlib
        import json

        from augdefense.io import sha256

        job = self.job
        subset = None if train_indices is None else hashlib.sha256(train_indices.numpy().tobytes()).hexdigest()
        kept = None
        if sanitized is not None:
            kept = json.dumps({k: sanitized[k] for k in ("removed", "relabeled")}, sort_keys=True)
        return json.dumps(
            {
                "data": sha256(job.data),
                "poison": sha256(job.poison) if job.poison else None,
                "extractor": sha256(job.extractor) if job.extractor else None,
                "sanitized": hashlib.sha256(kept.encode()).hexdigest() if kept else None,
                "defense": job.defense,
                "recipe": job.recipe,
                "model": job.model,
                "runtime": job.runtime,
                "seed": job.seed,
                "threads": job.threads,
                "train_indices": subset,
            },
            sort_keys=True,
        )

    def training_set(self, sanitized: dict | None = None, train_indices=None):
        """The poisoned training set (restricted to ``train_indices`` of the full set when given),
        minus what a filter removed and with what it relabelled."""
        import torch

        from augdefense import poisons
        from augdefense.data import take

        images, labels = poisons.training_set(self.dataset, self.poison)
        if train_indices is not None:
            images, labels = take(images, train_indices), labels[train_indices]
        if sanitized is None:
            return images, labels
        for index, label in sanitized["relabeled"]:
            labels[index] = label
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[torch.tensor(sanitized["removed"], dtype=torch.long)] = False
        return take(images, keep), labels[keep]

    def fit(self, sanitized: dict | None = None, train_indices=None) -> dict:
        """Train from scratch (resuming from the job's checkpoint when it holds this run's state)
        and evaluate. Returns the model, its history, probabilities and where it ran."""
        import torch

        from augdefense import gpu
        from augdefense.training import Checkpointer, normalizer_for, seed_everything, train

        job, rt = self.job, self.runtime
        torch.set_num_threads(job.threads)
        seed_everything(job.seed, rt.deterministic)
        with timing.phase("model"):
            model = self._model()
            images, labels = self.training_set(sanitized, train_indices)
        normalizer = normalizer_for(self.dataset, self.recipe)
        fingerprint = self.fingerprint(train_indices, sanitized)
        checkpointer = Checkpointer(Path(job.checkpoint) if job.checkpoint else None, rt.checkpoint_every, fingerprint)
        with gpu.acquire(rt.device, jobs_per_device=rt.jobs_per_gpu) as slot:
            device = torch.device(slot.device)
            log.info(
                "defense %s, seed %d on %s (%d threads), %d training images",
                self.defense.describe(),
                job.seed,
                device,
                job.threads,
                len(labels),
            )
            start = time.perf_counter()
            with timing.phase("train"):
                history = train(
                    model,
                    images,
                    labels,
                    self.defense,
                    self.recipe,
                    normalizer,
                    device,
                    job.seed,
                    amp=rt.amp,
                    checkpointer=checkpointer,
                    compile_model=rt.compile,
                    loader_workers=rt.loader_workers,
                )
            seconds = time.perf_counter() - start
            with timing.phase("evaluate"):
                evaluated = self._evaluate(model, normalizer, device)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        return {
            "model": model.cpu(),
            "history": history,
            "n_train": len(labels),
            **evaluated,
            "seconds": seconds,
            "device": str(device),
            "device_name": name,
            "checkpointer": checkpointer,
        }

    def _model(self):
        """A fresh model of the job's architecture, or the pretrained extractor a transfer recipe starts from."""
        from augdefense import models
        from augdefense.training import start_from_extractor

        shape = self.dataset.image_shape
        model = models.build(self.job.model, shape[0], self.dataset.num_classes, shape[-1])
        if self.extractor is not None:
            start_from_extractor(model, self.extractor, self.recipe.last_layer_only)
        return model

    def _evaluate(self, model, normalizer, device) -> dict:
        """Probabilities on the clean test set (less the attack's own test images) and on the attack's
        evaluation images (and its wider set, where it has one)."""
        import torch

        from augdefense.data import take
        from augdefense.training import predict

        rt = self.runtime
        keep = torch.ones(len(self.dataset.test_labels), dtype=torch.bool)
        keep[self.poison["clean_exclude"]] = False
        clean_images = take(self.dataset.test_images, keep)
        wider = self.poison.get("all_eval_images")
        return {
            "clean_probs": predict(
                model, clean_images, normalizer, device, rt.eval_batch_size, rt.amp, workers=rt.loader_workers
            ),
            "clean_labels": self.dataset.test_labels[keep],
            "eval_probs": predict(model, self.poison["eval_images"], normalizer, device, rt.eval_batch_size, rt.amp),
            "all_eval_probs": None
            if wider is None
            else predict(model, wider, normalizer, device, rt.eval_batch_size, rt.amp),
        }


def train_victim(job: TrainingJob, *, attack: str, out: str, sanitized: str | None = None) -> dict:
    """Train a victim on the poisoned set under its defense; write its metrics record (``out``)."""
    from augdefense.io import read_json, write_json
    from augdefense.metrics import all_images_metrics, run_metrics

    run = TrainingRun.prepare(job)
    record = _check_sanitized(read_json(sanitized), sanitized, run) if sanitized else None
    if getattr(run.defense, "is_filter", False) and record is None:
        raise ConfigError(
            f"defense '{job.defense_name}' is a filter: it needs the sanitize step's output (input 'sanitized')"
        )
    result = run.fit(record)
    info = run.poison["info"]
    metrics = {
        "attack": attack,
        "defense": job.defense_name,
        "seed": job.seed,
        **run_metrics(result["clean_probs"], result["clean_labels"], result["eval_probs"], run.poison["eval_goals"]),
        **all_images_metrics(result["all_eval_probs"], run.poison.get("all_eval_goals")),
        **{k: v for k, v in info.items() if k not in ("attack", "seed", "type")},
        "attack_type": info.get("type"),
        "defense_type": run.defense.type_name,
        "epochs": run.recipe.epochs,
        "n_train": result["n_train"],
        "final_train_loss": result["history"][-1]["loss"],
        "train_seconds": round(result["seconds"], 2),
        "device": result["device"],
        "device_name": result["device_name"],
    }
    if record is not None:
        metrics.update({k: record[k] for k in ("n_removed", "n_relabeled", "filter_precision", "filter_recall")})
    metrics.update(
        run.defense.privacy_record(result["n_train"], run.dataset.image_shape, run.recipe.epochs, run.recipe.batch_size)
    )
    with timing.phase("write"):
        write_json(out, metrics)
    result["checkpointer"].clear()
    log.info("%s", metrics)
    return metrics


def train_feature_model(job: TrainingJob, *, out: str) -> None:
    """The filters' feature extractor: a model trained on the poisoned set with no defense."""
    from augdefense.io import save_tensors

    run = TrainingRun.prepare(job)
    result = run.fit()
    with timing.phase("write"):
        save_tensors(
            out, {"state_dict": result["model"].state_dict(), "model": job.model, "fingerprint": run.fingerprint()}
        )
    result["checkpointer"].clear()
    log.info("feature model seed %d -> %s", job.seed, out)


def train_crafting_model(job: TrainingJob, *, out: str) -> None:
    """The model an optimisation-based attack crafts against: trained on clean data, under the
    victim's defense for an adaptive attack (``none`` otherwise), with ``config.crafting_seed`` of
    the victims' seed, so the victim is a fresh initialisation, as in the papers."""
    from augdefense.io import save_tensors

    run = TrainingRun.prepare(replace(job, seed=crafting_seed(job.seed)))
    if getattr(run.defense, "is_filter", False):
        raise ConfigError(
            f"defense '{job.defense_name}' is a filter: an adaptive attack has no training-time defense to adapt to"
        )
    result = run.fit()
    clean_acc = float((result["clean_probs"].argmax(1) == result["clean_labels"]).float().mean())
    with timing.phase("write"):
        save_tensors(
            out,
            {
                "state_dict": result["model"].state_dict(),
                "model": job.model,
                "fingerprint": run.fingerprint(),
                "clean_acc": clean_acc,
            },
        )
    result["checkpointer"].clear()
    log.info("crafting model under %s, seed %d (clean accuracy %.4f) -> %s", job.defense_name, job.seed, clean_acc, out)


def pretrain_extractor(job: TrainingJob, *, pretraining: dict, out: str) -> None:
    """The transfer-learning setting's feature extractor, trained on clean data once per pretraining
    recipe and ``pretraining`` (``config.pretraining``), shared by every seed and every transfer
    recipe that pretrains alike: the whole training set of the job's data when it is the
    extractor's own dataset (``pretrain_data``: CIFAR-100 in the benchmark), or, in the offline
    fallback, a ``pretrain_share`` of each class of the victims' data, disjoint from the
    fine-tuning pool the attacks poison."""
    import torch

    from augdefense import data
    from augdefense.io import save_tensors

    run = TrainingRun.prepare(job)
    labels = run.dataset.train_labels
    if "pretrain_share" in pretraining:
        pretrain, _ = data.transfer_split(labels, {"pretrain_share": pretraining["pretrain_share"]})
    else:
        pretrain = torch.arange(len(labels))
    result = run.fit(train_indices=pretrain)
    clean_acc = float((result["clean_probs"].argmax(1) == result["clean_labels"]).float().mean())
    with timing.phase("write"):
        save_tensors(
            out,
            {
                "state_dict": result["model"].state_dict(),
                "model": job.model,
                "clean_acc": clean_acc,
                "pretrain_indices": pretrain.to(torch.long),
                "fingerprint": run.fingerprint(pretrain),
            },
        )
    result["checkpointer"].clear()
    log.info("extractor: %d pretraining images, clean accuracy %.4f -> %s", len(pretrain), clean_acc, out)


def _check_sanitized(record: dict, path, run: TrainingRun) -> dict:
    n = len(run.dataset.train_labels)
    if not isinstance(record, dict) or not {"removed", "relabeled", "n_removed"} <= set(record):
        raise ArtifactError(f"{path}: not a sanitize record (needs 'removed', 'relabeled', 'n_removed')")
    if any(not isinstance(i, int) or not 0 <= i < n for i in record["removed"]):
        raise ArtifactError(f"{path}: 'removed' holds indices outside 0..{n - 1}")
    return record
