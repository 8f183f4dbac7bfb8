"""The defense interface the training loop calls; the loop never asks which defense it runs.

A defense turns a batch of images in [0, 1] (after the baseline crop/flip) and integer labels
into what the model trains on, and computes the loss. Every defense takes an optional ``laplace``
key: Laplacian noise of that scale (in 1/255 pixel units) added after its own transform, which
is how noise composes with any mixing augmentation (DP-InstaHide = k-way mixup + laplace).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from augdefense.config import check_params

Forward = Callable[[torch.Tensor], torch.Tensor]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    losses = -(targets * F.log_softmax(logits.float(), dim=1)).sum(1)
    return losses.mean() if reduction == "mean" else losses


class Defense:
    type_name: ClassVar[str]
    # key -> (python type(s), check, description of the valid range)
    params: ClassVar[dict[str, tuple]] = {}
    common_params: ClassVar[dict[str, tuple]] = {
        "laplace": ((int, float), lambda v: v >= 0, ">= 0 (noise scale in 1/255 units)"),
    }

    def __init__(self, spec: dict, num_classes: int, name: str = "", seed: int = 0) -> None:
        self.name = name or spec.get("type", "?")
        self.num_classes = num_classes
        self.spec = dict(spec)
        check_params(spec, {**self.params, **self.common_params}, f"defenses.{self.name}")
        self.laplace = float(spec.get("laplace", 0.0))
        self.rng = np.random.default_rng(seed)

    # -- hooks --------------------------------------------------------------------------------
    def mix(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the augmented batch and its soft labels [B, num_classes]."""
        return x, self.one_hot(y)

    def transform(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, soft = self.mix(x, y, epoch)
        return self.add_noise(x), soft

    def add_noise(self, x: torch.Tensor) -> torch.Tensor:
        if self.laplace <= 0:
            return x
        return x + torch.distributions.Laplace(0.0, self.laplace / 255.0).sample(x.shape).to(x)

    def loss(self, forward: Forward, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        x, soft = self.transform(x, y, epoch)
        return soft_cross_entropy(forward(x), soft)

    def process_gradients(self, model: torch.nn.Module) -> None:
        """Called after each backward pass, before the optimizer step (DP-SGD clips and noises here)."""

    # -- helpers ------------------------------------------------------------------------------
    def generators(self) -> list[np.random.Generator]:
        """Every random generator the defense draws from (saved in training checkpoints)."""
        return [self.rng]

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).float()

    def describe(self) -> str:
        return f"{self.name} ({self.type_name})"
