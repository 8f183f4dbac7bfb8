"""The poison artifact every attack writes (``results/poisons/...pt``, tensors and plain values only):

- ``train_indices`` / ``train_images`` / ``train_labels``: training images replaced by poisons;
- ``eval_images`` / ``eval_labels`` / ``eval_goals``: the test-time inputs of the attack (patched
  victim-class images, or a target image), their true classes and the class the attacker wants;
- ``clean_exclude``: test indices left out of clean accuracy (e.g. a targeted attack's target);
- ``all_eval_images`` / ``all_eval_labels`` / ``all_eval_goals`` (optional): a second, wider test
  set whose success rate is reported beside the scored one (the trigger backdoors: every patched
  source-class test image, beside the benchmark's one target);
- ``train_subset`` (transfer setting only): the fine-tuning split the victim trains on, as indices
  of the full training set;
- ``info``: plain values describing the draw (classes chosen, patch location, ...).

Kept apart from the attack registry: the jobs that read a poison do not import the attacks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from augdefense.errors import ArtifactError
from augdefense.io import load_tensors

TENSORS = ("train_indices", "train_images", "train_labels", "eval_images", "eval_labels", "eval_goals", "clean_exclude")
ALL_EVAL = ("all_eval_images", "all_eval_labels", "all_eval_goals")


def load(path: str | Path, image_shape: tuple[int, ...], num_train: int, num_classes: int) -> dict:
    """Load a poison artifact and check it fits the dataset it will be applied to."""
    poison = load_tensors(path, {k: torch.Tensor for k in TENSORS} | {"info": dict})
    idx, images = poison["train_indices"], poison["train_images"]
    problems = []
    if images.dtype != torch.uint8 or poison["eval_images"].dtype != torch.uint8:
        problems.append("images must be uint8")
    if tuple(images.shape[1:]) not in ((), tuple(image_shape)) and len(idx):
        problems.append(f"train_images have shape {tuple(images.shape[1:])}, data has {tuple(image_shape)}")
    if not (len(idx) == len(images) == len(poison["train_labels"])):
        problems.append("train_indices, train_images and train_labels differ in length")
    if len(idx) and (idx.min() < 0 or idx.max() >= num_train or len(idx.unique()) != len(idx)):
        problems.append(f"train_indices must be distinct and in 0..{num_train - 1}")
    present = [k for k in ALL_EVAL if k in poison]
    if present and len(present) != len(ALL_EVAL):
        problems.append(f"{present} without {[k for k in ALL_EVAL if k not in poison]}")
    elif present:
        images, labels, goals = (poison[k] for k in ALL_EVAL)
        if not all(isinstance(t, torch.Tensor) for t in (images, labels, goals)) or images.dtype != torch.uint8:
            problems.append("all_eval_images must be uint8, all_eval_labels and all_eval_goals tensors")
        elif not (len(images) == len(labels) == len(goals)) or tuple(images.shape[1:]) != tuple(image_shape):
            problems.append("all_eval_* differ in length or do not fit the data's image shape")
    for key in ("train_labels", "eval_labels", "eval_goals", *(ALL_EVAL[1:] if present else ())):
        t = poison[key]
        if isinstance(t, torch.Tensor) and len(t) and (t.min() < 0 or t.max() >= num_classes):
            problems.append(f"{key} outside 0..{num_classes - 1}")
    if problems:
        raise ArtifactError(f"{path}: malformed poison: " + "; ".join(problems))
    return poison


def none(image_shape: tuple[int, ...]) -> dict:
    """The artifact of an attack that poisons and evaluates nothing (clean training)."""
    empty = torch.zeros(0, dtype=torch.long)
    return {
        "train_indices": empty,
        "train_images": torch.zeros((0, *image_shape), dtype=torch.uint8),
        "train_labels": empty,
        "eval_images": torch.zeros((0, *image_shape), dtype=torch.uint8),
        "eval_labels": empty,
        "eval_goals": empty,
        "clean_exclude": empty,
        "info": {},
    }


def apply(train_images, train_labels: torch.Tensor, poison: dict):
    """Return copies of the training set with the poisoned images (and labels) put in place
    (for streamed images, a view that shows the poisons at their indices: ``data.ImageFiles``)."""
    from augdefense.data import ImageFiles

    labels, idx = train_labels.clone(), poison["train_indices"]
    if isinstance(train_images, ImageFiles):
        images = train_images.replace(idx, poison["train_images"])
    else:
        images = train_images.clone()
        if len(idx):
            images[idx] = poison["train_images"]
    if len(idx):
        labels[idx] = poison["train_labels"]
    return images, labels


def training_set(dataset, poison: dict):
    """The training set a victim sees: the poisons put in place, restricted to the fine-tuning
    split when the attack crafted in one (transfer learning)."""
    from augdefense.data import take

    images, labels = apply(dataset.train_images, dataset.train_labels, poison)
    if "train_subset" in poison:
        return take(images, poison["train_subset"]), labels[poison["train_subset"]]
    return images, labels


def positions_in_training_set(poison: dict) -> torch.Tensor:
    """The poisons' positions in the set ``training_set`` returns (the fine-tuning split, if any)."""
    positions = poison["train_indices"]
    if "train_subset" in poison:
        positions = torch.searchsorted(poison["train_subset"], positions)
    return positions
