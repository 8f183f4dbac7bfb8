"""Mixing augmentations as poisoning defenses (Borgnia et al. 2021, §3; DP-InstaHide §2):
k-way mixup, CutMix, cutout and MaxUp. ``none`` is the baseline (crop + flip only).
"""

from __future__ import annotations

import torch

from augdefense.defenses import build, register
from augdefense.defenses.base import Defense, Forward, soft_cross_entropy


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
        "k": (int, lambda v: v >= 1, "an integer >= 1"),
        "alpha": ((int, float), lambda v: v > 0, "> 0"),
        "weights": (str, lambda v: v in ("dirichlet", "equal"), "'dirichlet' or 'equal'"),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.k = spec.get("k", 2)
        self.alpha = float(spec.get("alpha", 1.0))
        self.weights = spec.get("weights", "dirichlet")

    def theorem2_k(self):
        return self.k if self.weights == "equal" or self.k == 1 else None

    def draw_weights(self) -> torch.Tensor:
        if self.weights == "equal":
            return torch.full((self.k,), 1.0 / self.k, dtype=torch.float64)
        return torch.from_numpy(self.rng.dirichlet([self.alpha] * self.k))

    def mix(self, x, y, epoch):
        lam = self.draw_weights()
        b = x.shape[0]
        perms = [torch.arange(b, device=x.device)] + [
            torch.randperm(b, device=x.device) for _ in range(self.k - 1)]
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
        "alpha": ((int, float), lambda v: v > 0, "> 0"),
        "p": ((int, float), lambda v: 0 <= v <= 1, "in [0, 1]"),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        from torchvision.transforms import v2  # here: importing torchvision costs every other job ~3 s

        self.p = float(spec.get("p", 0.5))
        self.cutmix = v2.CutMix(alpha=float(spec.get("alpha", 1.0)), num_classes=num_classes)

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
    params = {"size": (int, lambda v: v >= 1, "an integer >= 1 (pixels)")}

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.size = spec.get("size", 16)

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
        "m": (int, lambda v: v >= 1, "an integer >= 1"),
        "start_epoch": (int, lambda v: v >= 0, "an integer >= 0"),
        "inner": (dict, lambda v: True, "a defense entry, e.g. {type: cutout, size: 16}"),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.m = spec.get("m", 4)
        self.start_epoch = spec.get("start_epoch", 5)
        self.inner = build(spec.get("inner", {"type": "cutout", "size": 16}), num_classes,
                           name=f"{self.name}.inner", seed=seed + 1)

    def generators(self):
        return [self.rng, *self.inner.generators()]

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
