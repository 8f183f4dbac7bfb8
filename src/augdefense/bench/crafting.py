"""Gradient-matching crafting (Witches' Brew) against its peer, IBM ART's ``GradientMatchingAttack``
(PyTorch path): seconds per iteration of each on the same model, target, poisons and eps."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from augdefense import data, defenses, models
from augdefense.attacks.base import CraftingContext
from augdefense.training import Normalizer, Recipe, train

CRAFT_BUDGET = 0.01  # share of the training set poisoned (the papers' and our attack's default): 14 of 1437
CRAFT_EPS = 16 / 255
CRAFT_BATCH = 512  # poisons per step, both sides: every poison in one batch, one optimizer step per iteration
CRAFT_MODEL_EPOCHS = 3  # clean training of the crafting model before the measurement (none in --tiny)


def _import_art():
    """ART's attack and PyTorch estimator; ImportError when ART (or what it needs) is missing."""
    import art
    from art.attacks.poisoning import GradientMatchingAttack
    from art.estimators.classification import PyTorchClassifier

    return art.__version__, GradientMatchingAttack, PyTorchClassifier


def _matching_loss(
    context: CraftingContext, poisons: torch.Tensor, labels: torch.Tensor, target: torch.Tensor, intended: int
) -> float:
    """1 - cos(poison-batch gradient, target gradient) over all parameters: the objective both
    implementations minimise, computed the same way for both outputs."""
    params = [p for p in context.model.parameters() if p.requires_grad]
    target_loss = F.cross_entropy(context.logits(target), torch.tensor([intended]))
    target_grad = torch.autograd.grad(target_loss, params)
    grads = torch.autograd.grad(F.cross_entropy(context.logits(poisons), labels), params)
    dot = sum((g * t).sum() for g, t in zip(grads, target_grad))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)) * torch.sqrt(sum(t.pow(2).sum() for t in target_grad))
    return float(1 - dot / norm)


@dataclass
class _Task:
    """What both sides craft: the poisons (images of the intended class, chosen as ART chooses them),
    the target, and the training set ART takes whole."""

    context: CraftingContext
    images: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor
    intended: int
    target_class: int
    x_train: np.ndarray
    y_train: np.ndarray
    indices: np.ndarray
    percent_poison: float


def bench_crafting(
    dataset: data.Dataset,
    model_spec: dict,
    iterations: int,
    repeats: int,
    model_epochs: int,
    budget: float = CRAFT_BUDGET,
    seed: int = 0,
) -> dict:
    """Seconds per crafting iteration of our ``brew`` and of ART's GradientMatchingAttack (PyTorch
    path), same model, target, intended class, number of poisons, eps, iterations, 1 restart, no
    augmentation. Each timing is one whole call divided by its iterations (so it includes each
    side's setup: the target gradient; for ART also its final pass over the poisons and the copy
    of the training set it returns). Medians over ``repeats``, after an uncounted 1-iteration round."""
    try:
        art_version, GradientMatchingAttack, PyTorchClassifier = _import_art()
    except ImportError as err:
        return {
            "skipped": f"IBM ART is not importable ({err}); pip install -e '.[bench]' to measure "
            "gradient-matching crafting against it"
        }
    model, normalizer = _crafting_model(dataset, model_spec, model_epochs, seed)
    task = _task(dataset, model, normalizer, budget, seed)
    # ART's attack calls ``classifier.model`` directly (its own ``preprocessing`` is not applied on
    # that path), so the normalisation is folded into the module it wraps. Same weights as ours. In
    # eval mode: ART puts the module back in the mode it found it in, and a fresh Sequential is in train mode.
    classifier = PyTorchClassifier(
        torch.nn.Sequential(normalizer, model).eval(),
        torch.nn.CrossEntropyLoss(),
        input_shape=tuple(dataset.image_shape),
        nb_classes=dataset.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    runners = {"ours": _ours(task, seed), "art": _theirs(task, classifier, GradientMatchingAttack, model, seed)}
    timings, poisons = _timed_rounds(runners, iterations, repeats)
    ours_s, art_s = statistics.median(timings["ours"]), statistics.median(timings["art"])
    total = len(task.y_train)

    def matching(images):
        return round(_matching_loss(task.context, images, task.labels, task.target, task.intended), 4)

    return {
        "poisons": len(task.indices),
        "training_images": total,
        "percent_poison": round(task.percent_poison, 6),
        "target_class": task.target_class,
        "intended_class": task.intended,
        "eps": "16/255",
        "iterations": iterations,
        "restarts": 1,
        "batch_size": CRAFT_BATCH,
        "augmentation": "none (ART's loop has none; ours runs with shift=0, flip=False)",
        "crafting_model": f"{model_spec['arch']} width {model_spec.get('width')}, {model_epochs} clean epochs",
        "art_version": art_version,
        "repeats": repeats,
        "ours_seconds_per_iteration": round(ours_s, 4),
        "art_seconds_per_iteration": round(art_s, 4),
        "ratio": round(art_s / ours_s, 2),
        "ours_runs": [round(t, 4) for t in timings["ours"]],
        "art_runs": [round(t, 4) for t in timings["art"]],
        # the objective after the last repeat, computed the same way for both (a sanity check, not a
        # quality comparison: the two optimise in different parametrisations with their own step sizes)
        "matching_loss": {
            "clean": matching(task.images),
            "ours": matching(poisons["ours"]),
            "art": matching(poisons["art"]),
        },
    }


def _crafting_model(dataset: data.Dataset, model_spec: dict, model_epochs: int, seed: int):
    """The model both sides craft against, trained clean for ``model_epochs``; and its normalizer."""
    shape, num_classes = dataset.image_shape, dataset.num_classes
    torch.manual_seed(seed)
    model = models.build(model_spec, shape[0], num_classes, shape[-1])
    normalizer = Normalizer(dataset.mean, dataset.std)
    if model_epochs:
        train(
            model,
            dataset.train_images,
            dataset.train_labels,
            defenses.build({"type": "none"}, num_classes),
            Recipe.from_spec({"epochs": model_epochs, "milestones": [], "crop_pad": 2, "flip": True}),
            normalizer,
            torch.device("cpu"),
            seed=seed,
            amp=False,
        )
    return model.eval(), normalizer


def _task(dataset: data.Dataset, model, normalizer, budget: float, seed: int) -> _Task:
    from augdefense.attacks.gradient_matching import GradientMatching

    # The target and intended class as our attack draws them for this seed.
    draw = GradientMatching({"type": "gradient_matching", "recipe": "bench", "budget": budget}, name="bench").draw(
        dataset, seed
    )
    intended, n = draw["intended_class"], len(draw["indices"])
    x_train = dataset.train_images.float().div(255).numpy()
    y_train = dataset.train_labels.numpy()
    # ART takes the whole training set and a share, and poisons the first int(share x N) of a
    # np.random permutation of the intended class's images: seeded here, so both sides craft the same images.
    percent_poison = (n + 0.5) / len(y_train)  # int(percent_poison * N) == n exactly
    np.random.seed(seed)
    indices = np.random.permutation(np.flatnonzero(y_train == intended))[:n]
    return _Task(
        context=CraftingContext(model, normalizer, torch.device("cpu")),
        images=torch.from_numpy(x_train[indices]),
        labels=torch.from_numpy(y_train[indices]),
        target=dataset.test_images[draw["target_index"]][None].float() / 255,
        intended=intended,
        target_class=draw["target_class"],
        x_train=x_train,
        y_train=y_train,
        indices=indices,
        percent_poison=percent_poison,
    )


def _ours(task: _Task, seed: int):
    from augdefense.attacks.gradient_matching import brew

    def run(its: int) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        result = brew(
            task.context,
            task.images,
            task.labels,
            task.target,
            task.intended,
            eps=CRAFT_EPS,
            iterations=its,
            restarts=1,
            batch_size=CRAFT_BATCH,
            shift=0,
            flip=False,
            seed=seed,
        )
        return time.perf_counter() - start, task.images + result["delta"]

    return run


def _theirs(task: _Task, classifier, GradientMatchingAttack, model, seed: int):
    def run(its: int) -> tuple[float, torch.Tensor]:
        # ART's default schedule (lr 0.1 until epoch 150 of 250, then /10 at 150, 200, 220) scaled to ``its``.
        milestones = [max(1, round(its * m / 250)) for m in (100, 150, 200, 220)]
        attack = GradientMatchingAttack(
            classifier,
            percent_poison=task.percent_poison,
            epsilon=CRAFT_EPS,
            max_trials=1,
            max_epochs=its,
            learning_rate_schedule=([1e-1, 1e-2, 1e-3, 1e-4], milestones),
            batch_size=CRAFT_BATCH,
            clip_values=(0.0, 1.0),
            verbose=0,
        )
        np.random.seed(seed)
        start = time.perf_counter()
        poisoned, _ = attack.poison(task.target.numpy(), np.array([task.intended]), task.x_train, task.y_train)
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)  # ART's backward also fills the model's .grad
        changed = np.flatnonzero(np.any(poisoned != task.x_train, axis=(1, 2, 3)))
        if not set(changed.tolist()) <= set(task.indices.tolist()):
            raise RuntimeError("ART poisoned other images than the benchmark expected (its selection changed?)")
        return elapsed, torch.from_numpy(poisoned[task.indices])

    return run


def _timed_rounds(runners: dict, iterations: int, repeats: int) -> tuple[dict, dict]:
    """Seconds per iteration of each runner per counted round, and each one's last poisons. Round 0
    runs one iteration each, to warm up, and is not counted; the rounds alternate who goes first."""
    timings: dict[str, list[float]] = {name: [] for name in runners}
    poisons = {}
    for repeat in range(repeats + 1):
        its = iterations if repeat else 1
        order = ("ours", "art") if repeat % 2 else ("art", "ours")
        for which in order:
            elapsed, poisons[which] = runners[which](its)
            if repeat:
                timings[which].append(elapsed / its)
    return timings, poisons


def crafting_markdown(c: dict) -> list[str]:
    if "skipped" in c:
        return [f"Crafting (gradient matching vs IBM ART): skipped: {c['skipped']}"]
    loss = c["matching_loss"]
    return [
        f"Crafting, gradient matching (Witches' Brew) vs IBM ART {c['art_version']} `GradientMatchingAttack` "
        f"(PyTorch path): {c['poisons']} poisons ({100 * c['poisons'] / c['training_images']:.1f}% of the "
        f"{c['training_images']} training images, all of class {c['intended_class']}) for one target of class "
        f"{c['target_class']}, eps {c['eps']}, "
        f"{c['iterations']} iterations, {c['restarts']} restart, batch {c['batch_size']} (all poisons, one step "
        f"per iteration), augmentation {c['augmentation']}; crafting model {c['crafting_model']}. Seconds per "
        f"iteration = one whole call / its iterations (setup included), median of {c['repeats']} repeats "
        f"(each: ours {c['ours_runs']}, ART {c['art_runs']}; runs alternate which goes first).",
        "",
        "| crafting | ours (s/iteration) | ART (s/iteration) | ratio (ART / ours) |",
        "|---|---|---|---|",
        f"| gradient matching | {c['ours_seconds_per_iteration']} | {c['art_seconds_per_iteration']} | {c['ratio']}× |",
        "",
        f"Matching loss (1 − cos) after the last repeat, same formula for both: clean poisons {loss['clean']}, "
        f"ours {loss['ours']}, ART {loss['art']} (a sanity check, not a quality comparison: each uses its own "
        f"parametrisation and step sizes).",
    ]
