"""The defense interface the training loop calls; the loop never asks which defense it runs.

A defense turns a batch of images in [0, 1] (after the baseline crop/flip) and integer labels
into what the model trains on, and computes the loss. Every defense takes an optional ``laplace``
key: Laplacian noise of that scale (in 1/255 pixel units) added after its own transform, which
is how noise composes with any mixing augmentation (DP-InstaHide = k-way mixup + laplace).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from augdefense.params import Param, complete

Forward = Callable[[torch.Tensor], torch.Tensor]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    losses = -(targets * F.log_softmax(logits.float(), dim=1)).sum(1)
    return losses.mean() if reduction == "mean" else losses


def laplace_noise(shape: torch.Size, scale: float, device: torch.device) -> torch.Tensor:
    """Laplace(0, ``scale``) noise of ``shape`` drawn on ``device`` from its default generator (seeded by
    ``training.seed_everything``, saved and restored with a training checkpoint), in float32: no host
    draw, no copy. The draw is torch.distributions.Laplace's (inverse CDF of one uniform per value),
    so on the CPU it gives the same numbers that sampler did."""
    eps = torch.finfo(torch.float32).eps
    u = torch.empty(shape, dtype=torch.float32, device=device).uniform_(eps - 1, 1)
    return -scale * u.sign() * torch.log1p(-u.abs())


class Defense:
    type_name: ClassVar[str]
    # The type's own config keys (the common ones below apply to every type that trains).
    params: ClassVar[dict[str, Param]] = {}
    common_params: ClassVar[dict[str, Param]] = {
        "laplace": Param(
            "number", "Laplacian input noise added after the augmentation, scale in 1/255 units", default=0, minimum=0
        ),
        # DP-InstaHide releases x + Laplace noise as is (Theorem 2 is about that release); clipping
        # to the valid range is post-processing, which keeps the guarantee, so it is an option.
        "laplace_clip": Param("boolean", "clip noised images to [0, 1]", default=False),
    }

    @classmethod
    def fields(cls) -> dict[str, Param]:
        """Every config key of this type."""
        return {**cls.common_params, **cls.params}

    def __init__(self, spec: dict, num_classes: int, name: str = "", seed: int = 0) -> None:
        self.name = name or spec.get("type", "?")
        self.num_classes = num_classes
        self.spec = complete(spec, self.fields(), f"defenses.{self.name}", allowed=("type",))
        self.laplace = float(self.spec["laplace"])
        self.laplace_clip = self.spec["laplace_clip"]
        self.rng = np.random.default_rng(seed)

    # -- hooks --------------------------------------------------------------------------------
    def bind_data_mean(self, mean: torch.Tensor | None) -> None:
        """Receive the training set's mean colour ([C], [0, 1] units; None when unknown)."""
        self.data_mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()

    def mix(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the augmented batch and its soft labels [B, num_classes]."""
        return x, self.one_hot(y)

    def transform(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, soft = self.mix(x, y, epoch)
        return self.add_noise(x), soft

    def add_noise(self, x: torch.Tensor) -> torch.Tensor:
        if self.laplace <= 0:
            return x
        noised = x + laplace_noise(x.shape, self.laplace / 255.0, x.device).to(x.dtype)
        return noised.clamp(0, 1) if self.laplace_clip else noised

    def loss(self, forward: Forward, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        x, soft = self.transform(x, y, epoch)
        return soft_cross_entropy(forward(x), soft)

    def process_gradients(self, model: torch.nn.Module) -> None:
        """Called after each backward pass, before the optimizer step (DP-SGD clips and noises here)."""

    def crafting_gradients(self, grads: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """What an adaptive attacker's crafting loop makes of the poison gradient (differentiably):
        unchanged, except where the defense post-processes gradients (DP-SGD)."""
        return grads

    def check_model(self, model: torch.nn.Module, where: str = "model") -> None:
        """Raise ConfigError before training if the defense cannot train this model."""

    def wrap_training(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, n_train: int, batch_size: int
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The model to call and the optimizer to step (per-sample DP-SGD wraps both)."""
        return model, optimizer

    def theorem2_k(self) -> int | None:
        """Mixture width for DP-InstaHide's Theorem 2, or None where the theorem does not cover the
        augmentation: it covers equal-weight k-way mixup and plain noise (k = 1) only, so a defense
        that changes the batch or the loss otherwise (CutMix, cutout, Dirichlet mixup) has none."""
        return 1 if type(self).mix is Defense.mix and type(self).loss is Defense.loss else None

    def noisy_releases(self, n_train: int, epochs: int) -> list[tuple[int, int]] | None:
        """The run's noised releases as (mixture width k, number released) pairs, for Theorem 2; None
        where the theorem does not cover them. One release per training image and epoch here."""
        k = self.theorem2_k()
        return None if k is None else [(k, n_train * epochs)]

    def privacy_record(self, n_train: int, image_shape: tuple[int, ...], epochs: int, batch_size: int) -> dict:
        """Privacy figures for the run's metrics: Theorem 2's epsilon when Laplacian noise is on (the
        releases composed: epsilon adds up over them), None where the theorem gives no guarantee."""
        if self.laplace <= 0:
            return {}
        from augdefense import privacy

        releases = self.noisy_releases(n_train, epochs)
        if releases is None or any(k > n_train for k, _ in releases):
            return {"theorem2_epsilon": None}
        sigma = privacy.sigma_from_noise(self.laplace, image_shape)
        epsilon = sum(privacy.mixup_laplace_epsilon(k, sigma, n_train, t) for k, t in releases if t)
        return {"theorem2_epsilon": epsilon, "theorem2_sigma": sigma}

    # -- helpers ------------------------------------------------------------------------------
    def generators(self) -> list[np.random.Generator]:
        """Every random generator the defense draws from (saved in training checkpoints)."""
        return [self.rng]

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).float()

    def describe(self) -> str:
        return f"{self.name} ({self.type_name})"
