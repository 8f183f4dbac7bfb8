"""Mixing augmentations as poisoning defenses (Borgnia et al. 2021, §3; DP-InstaHide §2):
k-way mixup, CutMix, cutout and MaxUp. ``none`` is the baseline (crop + flip only).
"""

from __future__ import annotations

import torch

from augdefense.defenses import build, register
from augdefense.defenses.base import Defense, Forward, soft_cross_entropy
from augdefense.params import Param


@register
class NoDefense(Defense):
    type_name = "none"


@register
class Mixup(Defense):
    """k-way mixup (Zhang et al. 2018, generalised as in Geiping et al.'s code): one weight vector
    per batch, drawn from Dirichlet(alpha, ..., alpha) or equal to 1/k (DP-InstaHide's Theorem 2);
    each image is mixed with k-1 others drawn by random permutations of the batch.
    torchvision's v2.MixUp is 2-way only, hence written here."""

    type_name = "mixup"
    params = {
        "k": Param("integer", "mixture width (images mixed into one)", default=2, minimum=1),
        "alpha": Param("number", "Dirichlet concentration of the mixing weights", default=1.0, exclusive_minimum=0),
        "weights": Param(
            "string", "'equal': 1/k each (DP-InstaHide's Theorem 2)", default="dirichlet", enum=("dirichlet", "equal")
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.k = self.spec["k"]
        self.alpha = float(self.spec["alpha"])
        self.weights = self.spec["weights"]

    def theorem2_k(self):
        return self.k if self.weights == "equal" or self.k == 1 else None

    def draw_weights(self) -> torch.Tensor:
        if self.weights == "equal":
            return torch.full((self.k,), 1.0 / self.k, dtype=torch.float64)
        return torch.from_numpy(self.rng.dirichlet([self.alpha] * self.k))

    def mix(self, x, y, epoch):
        lam = self.draw_weights()
        b = x.shape[0]
        perms = [torch.arange(b, device=x.device)] + [torch.randperm(b, device=x.device) for _ in range(self.k - 1)]
        one_hot = self.one_hot(y)
        mixed_x = sum(float(w) * x[p] for w, p in zip(lam, perms))
        mixed_y = sum(float(w) * one_hot[p] for w, p in zip(lam, perms))
        return mixed_x, mixed_y


@register
class CutMix(Defense):
    """CutMix (Yun et al. 2019) through torchvision's v2.CutMix: a box of area (1 - lambda),
    lambda ~ Beta(alpha, alpha), pasted from a paired image, labels mixed by the box's actual
    (clipped) area. Applied to a batch with probability p, as in the original code."""

    type_name = "cutmix"
    params = {
        "alpha": Param(
            "number", "Beta(alpha, alpha) of the kept area (Yun et al.: 1)", default=1.0, exclusive_minimum=0
        ),
        "p": Param(
            "number", "probability a batch is mixed (Yun et al.'s cutmix_prob: 0.5)", default=0.5, minimum=0, maximum=1
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        from torchvision.transforms import v2  # here: only the jobs that use CutMix pay for importing torchvision

        self.p = float(self.spec["p"])
        self.cutmix = v2.CutMix(alpha=float(self.spec["alpha"]), num_classes=num_classes)

    def mix(self, x, y, epoch):
        if self.rng.random() >= self.p:
            return x, self.one_hot(y)
        mixed_x, mixed_y = self.cutmix(x, y)
        return mixed_x, mixed_y.float()


@register
class Cutout(Defense):
    """Cutout (DeVries & Taylor 2017): a size x size square, centred uniformly over the image and
    clipped at its border, set to black; labels unchanged. Per image, batched. v2.RandomErasing
    samples area and aspect ratio and keeps the box inside the image, so it is not this."""

    type_name = "cutout"
    params = {
        "size": Param(
            "integer", "side of the square in pixels (DeVries & Taylor: 16 on CIFAR-10)", default=16, minimum=1
        )
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.size = self.spec["size"]

    def mix(self, x, y, epoch):
        b, _, h, w = x.shape
        cy = torch.randint(0, h, (b, 1), device=x.device)
        cx = torch.randint(0, w, (b, 1), device=x.device)
        rows = torch.arange(h, device=x.device)[None]
        cols = torch.arange(w, device=x.device)[None]
        half = self.size // 2
        in_rows = (rows >= cy - half) & (rows < cy - half + self.size)  # [B, H]
        in_cols = (cols >= cx - half) & (cols < cx - half + self.size)  # [B, W]
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, H, W]
        return x.masked_fill(mask, 0.0), self.one_hot(y)


@register
class MaxUp(Defense):
    """MaxUp (Gong et al. 2020): m augmented draws of each image, train on the per-image worst
    (highest) loss; plain training before ``start_epoch`` (the paper's late start, 5 epochs).
    The draws come from any registered defense given as ``inner`` (cutout in the papers)."""

    type_name = "maxup"
    params = {
        "m": Param("integer", "augmented draws per image", default=4, minimum=1),
        "start_epoch": Param(
            "integer", "epochs of plain training first (the papers' late start: 5)", default=5, minimum=0
        ),
        "inner": Param(
            ref="defense",
            doc="the augmentation drawn m times (cutout in the papers)",
            default={"type": "cutout", "size": 16},
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.m = self.spec["m"]
        self.start_epoch = self.spec["start_epoch"]
        self.inner = build(self.spec["inner"], num_classes, name=f"{self.name}.inner", seed=seed + 1)

    def generators(self):
        return [self.rng, *self.inner.generators()]

    def theorem2_k(self):
        """The inner augmentation's width when Theorem 2 covers it and it adds no noise of its own."""
        return self.inner.theorem2_k() if self.inner.laplace == 0 else None

    def noisy_releases(self, n_train, epochs):
        """Plain noised images before ``start_epoch``, then m noised draws of each image per epoch."""
        k = self.theorem2_k()
        if k is None:
            return None
        plain = min(self.start_epoch, epochs)
        return [(1, n_train * plain), (k, n_train * (epochs - plain) * self.m)]

    def loss(self, forward: Forward, x, y, epoch):
        if epoch < self.start_epoch:
            return super().loss(forward, x, y, epoch)
        draws = [self.transform_draw(x, y, epoch) for _ in range(self.m)]
        logits = forward(torch.cat([d[0] for d in draws]))
        losses = soft_cross_entropy(logits, torch.cat([d[1] for d in draws]), reduction="none")
        return losses.view(self.m, x.shape[0]).max(dim=0).values.mean()

    def transform_draw(self, x, y, epoch):
        x, soft = self.inner.transform(x, y, epoch)
        return self.add_noise(x), soft
