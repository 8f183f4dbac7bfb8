"""The papers' training recipe and one victim run (train under a defense, then evaluate).

Data stay on the training device as uint8; each batch is converted, cropped/flipped, passed
through the defense and normalised there, with no per-sample Python pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from augdefense.config import check_params, pretrain_share
from augdefense.errors import ArtifactError, TrainingError
from augdefense.io import load_tensors, save_tensors

log = logging.getLogger("augdefense.training")

TRANSFER_KEYS = {"pretrain_recipe", "pretrain_share", "finetune"}
RECIPE_PARAMS = {
    "epochs": (int, lambda v: v >= 1, "an integer >= 1"),
    "milestones": (list, lambda v: all(isinstance(m, int) and m >= 1 for m in v), "a list of epochs"),
    "gamma": ((int, float), lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr": ((int, float), lambda v: v > 0, "> 0"),
    "momentum": ((int, float), lambda v: 0 <= v < 1, "in [0, 1)"),
    "nesterov": (bool, lambda v: True, "true or false"),
    "weight_decay": ((int, float), lambda v: v >= 0, ">= 0"),
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "crop_pad": (int, lambda v: v >= 0, "an integer >= 0 (pixels)"),
    "flip": (bool, lambda v: True, "true or false"),
    "transfer": (dict, lambda v: set(v) <= TRANSFER_KEYS and "pretrain_recipe" in v
                 and v.get("finetune", "last_layer") in ("last_layer", "end_to_end")
                 and 0 < pretrain_share(v) < 1,
                 "a mapping with pretrain_recipe (a recipe name) and optionally pretrain_share in (0, 1) "
                 "and finetune 'last_layer' or 'end_to_end'"),
}
RUNTIME_PARAMS = {
    "device": (str, lambda v: v in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
    "amp": (bool, lambda v: True, "true or false (bf16 autocast on CUDA)"),
    "deterministic": (bool, lambda v: True, "true or false"),
    "eval_batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_every": (int, lambda v: v >= 1, "an integer >= 1 (epochs)"),
    "compile": (bool, lambda v: True, "true or false (torch.compile the training forward pass)"),
}


@dataclass(frozen=True)
class Recipe:
    epochs: int = 80
    milestones: tuple = (30, 50, 70)
    gamma: float = 0.1
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 128
    crop_pad: int = 4
    flip: bool = True
    # Transfer learning (Schwarzschild et al.'s setting): the victim starts from a feature extractor
    # pretrained on a disjoint split and fine-tunes the last layer or end to end.
    transfer: dict | None = None

    @property
    def last_layer_only(self) -> bool:
        return bool(self.transfer) and self.transfer.get("finetune", "last_layer") == "last_layer"

    @classmethod
    def from_spec(cls, spec: dict, where: str = "recipe") -> "Recipe":
        check_params({"type": None, **spec}, RECIPE_PARAMS, where)
        return cls(**{k: (tuple(v) if k == "milestones" else v) for k, v in spec.items()})


@dataclass(frozen=True)
class Runtime:
    device: str = "auto"
    amp: bool = True
    deterministic: bool = False
    eval_batch_size: int = 1024
    checkpoint_every: int = 5
    compile: bool = False  # opt-in: compilation costs minutes up front and pays off on long GPU runs

    @classmethod
    def from_spec(cls, spec: dict) -> "Runtime":
        check_params({"type": None, **spec}, RUNTIME_PARAMS, "runtime")
        return cls(**spec)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


class Normalizer(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.register_buffer("std", std.float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class Checkpointer:
    """Saves the whole training state every ``every`` epochs to a scratch file (not a workflow
    output), so a killed job resumes where it stopped and ends with the same numbers. The
    ``fingerprint`` names what the run depends on; a checkpoint of another run is ignored."""

    path: Path | None
    every: int = 5
    fingerprint: str = ""

    def load(self) -> dict | None:
        if self.path is None or not Path(self.path).exists():
            return None
        try:
            state = load_tensors(self.path, {"fingerprint": str, "epoch": int, "model": dict})
        except ArtifactError as exc:
            log.warning("ignoring checkpoint (%s); training from scratch", exc)
            return None
        if state["fingerprint"] != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to another run; training from scratch", self.path)
            return None
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return state

    def due(self, epoch: int, last: int) -> bool:
        return self.path is not None and epoch < last and epoch % self.every == 0

    def save(self, state: dict) -> None:
        save_tensors(self.path, {"fingerprint": self.fingerprint, **state})

    def clear(self) -> None:
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, defense, recipe: Recipe,
          normalizer: Normalizer, device: torch.device, seed: int, amp: bool = True,
          checkpointer: Checkpointer | None = None, compile_model: bool = False) -> list[dict]:
    """Train ``model`` in place on uint8 ``images``; return one record per epoch."""
    from augdefense import augment

    model.to(device)
    normalizer.to(device)
    # channels-last: faster convolutions on GPUs (tensor cores) and on CPUs (oneDNN; ~15% per training here).
    model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov and recipe.momentum > 0,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    shuffle = torch.Generator().manual_seed(seed)
    n = len(labels)
    # A defense may wrap both (per-sample DP-SGD); checkpoints keep the unwrapped ones' state.
    trained_model, step_optimizer = defense.wrap_training(model, optimizer, n, recipe.batch_size)
    if compile_model:
        trained_model = torch.compile(trained_model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = normalizer(x).contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            return trained_model(x)

    checkpointer = checkpointer or Checkpointer(None)
    history, first_epoch = [], 0
    resumed = checkpointer.load()
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in resumed:
            torch.cuda.set_rng_state(resumed["rng_cuda"], device)
        shuffle.set_state(resumed["rng_shuffle"])
        for generator, state in zip(defense.generators(), json.loads(resumed["rng_defense"])):
            generator.bit_generator.state = state
        history, first_epoch = list(resumed["history"]), resumed["epoch"]

    for epoch in tqdm(range(first_epoch, recipe.epochs), desc=f"train [{defense.describe()}]", mininterval=10,
                      initial=first_epoch, total=recipe.epochs):
        # Last-layer fine-tuning: the frozen extractor keeps its BatchNorm statistics (eval mode).
        model.train(not recipe.last_layer_only)
        order = torch.randperm(n, generator=shuffle).to(device)
        total, steps, start = 0.0, 0, time.perf_counter()
        for step, begin in enumerate(range(0, n, recipe.batch_size)):
            idx = order[begin:begin + recipe.batch_size]
            x = images[idx].float().div_(255)
            x = augment.baseline(x, recipe.crop_pad, recipe.flip)
            loss = defense.loss(forward, x, labels[idx], epoch)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(f"loss is {value} at epoch {epoch + 1}, step {step + 1} under defense "
                                    f"{defense.describe()}; no metrics were written")
            step_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            defense.process_gradients(model)
            step_optimizer.step()
            total, steps = total + value, steps + 1
        scheduler.step()
        record = {"epoch": epoch + 1, "loss": total / steps, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - start}
        log.info("epoch %(epoch)d loss %(loss).4f lr %(lr).4g (%(seconds).1f s)", record)
        history.append(record)
        if checkpointer.due(epoch + 1, recipe.epochs):
            checkpointer.save({
                "epoch": epoch + 1, "history": history, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(), "rng_shuffle": shuffle.get_state(),
                "rng_defense": json.dumps([g.bit_generator.state for g in defense.generators()]),
                **({"rng_cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            })
    return history


def classifier_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The final linear layer (``linear`` in our models, ``fc`` in torchvision's)."""
    return model.linear if hasattr(model, "linear") else model.fc


def start_from_extractor(model: torch.nn.Module, state: dict, last_layer_only: bool) -> None:
    """Load a pretrained extractor into ``model``, re-initialise the classifier head for the
    fine-tuning set, and freeze everything else when only the last layer is fine-tuned."""
    model.load_state_dict(state)
    head = classifier_head(model)
    head.reset_parameters()
    if last_layer_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
            batch_size: int = 1024, amp: bool = True) -> torch.Tensor:
    """Softmax probabilities [N, classes] for uint8 ``images`` (no augmentation)."""
    model.eval().to(device)
    normalizer.to(device)
    out = []
    for begin in range(0, len(images), batch_size):
        x = normalizer(images[begin:begin + batch_size].to(device).float().div_(255))
        with _autocast(device, amp):
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
