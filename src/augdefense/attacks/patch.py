"""The papers' backdoor patch (DP-InstaHide §2.1 and appendix A.1).

Per seed: a random (target, victim) class pair and a random Bernoulli patch of size p x p (each
pixel and channel 0 or 1, i.e. 0 or 255 in uint8; the paper normalises it with the data's mean and
std, as it does the images). A ``fraction`` of the target class's training images get the patch at
a random location each, labels unchanged. At test time every victim-class test image gets the
patch at a random location; success = share classified as the target class. ``control: true``
draws the same pair, trigger and test images but poisons nothing: the clean control (how often a
clean model already maps patched victim images to the target).
"""

from __future__ import annotations

import numpy as np
import torch

from augdefense.attacks import draws, register
from augdefense.attacks.base import Attack
from augdefense.config import patched_count
from augdefense.params import Param


def paste(images: torch.Tensor, patch: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """Return copies of ``images`` with ``patch`` pasted at (rows[i], cols[i]) in image i."""
    out = images.clone()
    p = patch.shape[-1]
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        out[i, :, r : r + p, c : c + p] = patch
    return out


@register
class PatchBackdoor(Attack):
    type_name = "patch"
    params = {
        "patch_size": Param("integer", "patch side in pixels (4 in the papers)", default=4, minimum=1),
        "fraction": Param(
            "number", "share of the target class's training images patched", default=0.1, exclusive_minimum=0, maximum=1
        ),
        "control": Param("boolean", "poison nothing (the clean control)", default=False),
    }

    def __init__(self, spec, name=""):
        super().__init__(spec, name)
        self.patch_size = self.spec["patch_size"]
        self.fraction = float(self.spec["fraction"])
        self.control = self.spec["control"]

    def craft(self, dataset, seed: int, context=None) -> dict:
        _, h, w = dataset.image_shape
        p = self.patch_size
        # The class pair and the patch come from the seed alone (draws.backdoor), so every fraction
        # of one seed, and the trigger backdoors, attack the same pair with the same trigger;
        # placements use their own streams.
        draw = draws.backdoor(dataset, seed, p, f"attacks.{self.name}.patch_size")
        target, victim, patch = draw["target_class"], draw["victim_class"], draw["patch"]

        place = np.random.default_rng([seed, 1])
        target_idx = torch.nonzero(dataset.train_labels == target).flatten().numpy()
        n_poison = 0 if self.control else patched_count(self.fraction, len(target_idx))
        chosen = np.sort(place.choice(target_idx, n_poison, replace=False))
        rows, cols = place.integers(0, h - p + 1, n_poison), place.integers(0, w - p + 1, n_poison)
        train_indices = torch.from_numpy(chosen).long()
        train_images = paste(dataset.train_images[train_indices], patch, rows, cols)

        test_place = np.random.default_rng([seed, 2])
        victim_idx = torch.nonzero(dataset.test_labels == victim).flatten()
        t_rows = test_place.integers(0, h - p + 1, len(victim_idx))
        t_cols = test_place.integers(0, w - p + 1, len(victim_idx))
        eval_images = paste(dataset.test_images[victim_idx], patch, t_rows, t_cols)
        return {
            "train_indices": train_indices,
            "train_images": train_images,
            "train_labels": dataset.train_labels[train_indices].clone(),
            "eval_images": eval_images,
            "eval_labels": torch.full((len(victim_idx),), victim, dtype=torch.long),
            "eval_goals": torch.full((len(victim_idx),), target, dtype=torch.long),
            "clean_exclude": torch.zeros(0, dtype=torch.long),
            "patch": patch,
            "info": {
                "target_class": target,
                "victim_class": victim,
                "n_poisons": n_poison,
                "attack": self.name,
                "type": self.type_name,
                "seed": seed,
            },
        }
