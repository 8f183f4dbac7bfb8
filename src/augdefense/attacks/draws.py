"""The per-seed random draws that attacks share, so that every attack type of one seed (and its
clean control) attacks the same classes and image.

- ``targeted`` (gradient matching, feature collision, convex polytope): stream [seed, 10] draws the
  target class, the target test image and the goal class (!= target class); [seed, 11] the
  training images of the goal class that become poisons.
- ``backdoor`` (patch, hidden trigger, clean label): stream [seed, 0] draws the (target, victim)
  class pair and the Bernoulli trigger (0 or 255 per pixel and channel).

Each attack draws its placements from streams of its own after these.
"""

from __future__ import annotations

import numpy as np
import torch

from augdefense.errors import ConfigError


def targeted(dataset, seed: int, n_poisons: int, where: str) -> dict:
    """The seed's target test image, goal class and ``n_poisons`` goal-class training images.
    ``where`` names the config key that sets ``n_poisons`` (for the error message)."""
    pick = np.random.default_rng([seed, 10])
    target_class = int(pick.integers(dataset.num_classes))
    candidates = torch.nonzero(dataset.test_labels == target_class).flatten().numpy()
    if len(candidates) == 0:
        raise ConfigError(f"{where}: class {target_class} has no test image to target")
    target_index = int(pick.choice(candidates))
    goal = int(pick.choice([c for c in range(dataset.num_classes) if c != target_class]))
    pool = torch.nonzero(dataset.train_labels == goal).flatten().numpy()
    check_pool(where, n_poisons, len(pool), f"goal class {goal}")
    indices = np.sort(np.random.default_rng([seed, 11]).choice(pool, n_poisons, replace=False))
    return {
        "target_class": target_class,
        "target_index": target_index,
        "goal_class": goal,
        "indices": torch.from_numpy(indices).long(),
    }


def backdoor(dataset, seed: int, patch_size: int, where: str) -> dict:
    """The seed's (target, victim) class pair and its ``patch_size`` Bernoulli trigger (uint8)."""
    channels, h, w = dataset.image_shape
    if patch_size > min(h, w):
        raise ConfigError(f"{where}: {patch_size} exceeds the {h}x{w} images")
    pick = np.random.default_rng([seed, 0])
    target, victim = (int(c) for c in pick.choice(dataset.num_classes, 2, replace=False))
    patch = torch.from_numpy(pick.integers(0, 2, size=(channels, patch_size, patch_size)) * 255).to(torch.uint8)
    return {"target_class": target, "victim_class": victim, "patch": patch}


def check_pool(where: str, wanted: int, pool: int, what: str) -> None:
    if wanted > pool:
        raise ConfigError(f"{where}: {wanted} poisons, but {what} has only {pool} training images")
