"""Mixing augmentations as poisoning defenses (Borgnia et al. 2021, §3; DP-InstaHide §2):
k-way mixup, CutMix, cutout and MaxUp. ``none`` is the baseline (crop + flip only).
"""

from __future__ import annotations

import math

import torch

from augdefense.defenses import build, register
from augdefense.defenses.base import Defense, Forward, soft_cross_entropy
from augdefense.errors import ConfigError
from augdefense.params import OPTIONAL, Param


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
    clipped at its border, filled; labels unchanged. The defaults are DeVries & Taylor's and the
    papers' text ("the patch remains black"): one 16-px box per image, black.

    Geiping et al.'s ``Cutout`` (JonasGeiping/data-poisoning,
    ``forest/data/mixing_data_augmentations.py``, ``Cutout.forward`` / ``_rand_bbox``) draws one
    box for the whole batch and fills it with 0 after normalisation, i.e. the dataset's mean
    colour (``boxes: per_batch, fill: mean``); its side is ``int(W sqrt(1 - 0.66 strength))``
    of the image side W, centred at a uniform pixel c and cut as ``[c - side // 2, c + side // 2)``
    clipped: ``strength`` gives that box. forest's default ``mixing_strength`` is 0
    (``forest/hyperparameters.py``): side 32 on CIFAR-10, so c +/- 16 clipped, 16 to 32 px; at
    strength 1 it is 18 px (c +/- 9). v2.RandomErasing samples area and aspect ratio and keeps the
    box inside the image, so it is not this; written here."""

    type_name = "cutout"
    params = {
        "size": Param(
            "integer", "side of the square in pixels (DeVries & Taylor: 16 on CIFAR-10)", default=16, minimum=1
        ),
        "boxes": Param(
            "string",
            "per_image: a box per image (DeVries & Taylor); per_batch: one box for the whole batch (forest)",
            default="per_image",
            enum=("per_image", "per_batch"),
        ),
        "fill": Param(
            "string",
            "black (DeVries & Taylor, the papers' text) or mean: the dataset's mean colour (forest)",
            default="black",
            enum=("black", "mean"),
        ),
        "strength": Param(
            "number",
            "forest's mixing_strength instead of size: side int(W sqrt(1 - 0.66 strength)) of the image side W, "
            "cut as centre +/- side // 2 (0, forest's default: 16-32 px boxes on 32-px images; 1: 18 px)",
            default=OPTIONAL,
            minimum=0,
            maximum=1.5,
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        if "strength" in self.spec and "size" in spec:
            raise ConfigError(f"defenses.{self.name}: give size or strength (forest's box), not both")
        self.size = self.spec["size"]
        self.strength = self.spec.get("strength")
        self.per_batch = self.spec["boxes"] == "per_batch"
        self.fill = self.spec["fill"]

    def box(self, side: int) -> tuple[int, int]:
        """(extent before the centre, full extent) of the box along an image side of ``side`` px:
        ``size`` as DeVries & Taylor, or forest's ``_rand_bbox`` at ``strength``."""
        if self.strength is None:
            return self.size // 2, self.size
        half = int(side * math.sqrt(1.0 - 0.66 * self.strength)) // 2
        return half, 2 * half

    def bind_data_mean(self, mean):
        super().bind_data_mean(mean)
        if self.fill == "mean" and self.data_mean is None:
            raise ConfigError(f"defenses.{self.name}.fill: 'mean' needs the dataset's mean colour, and none was given")

    def mix(self, x, y, epoch):
        b, c, h, w = x.shape
        n_boxes = 1 if self.per_batch else b
        cy = torch.randint(0, h, (n_boxes, 1), device=x.device)
        cx = torch.randint(0, w, (n_boxes, 1), device=x.device)
        rows = torch.arange(h, device=x.device)[None]
        cols = torch.arange(w, device=x.device)[None]
        (row_half, row_size), (col_half, col_size) = self.box(h), self.box(w)
        in_rows = (rows >= cy - row_half) & (rows < cy - row_half + row_size)  # [B or 1, H]
        in_cols = (cols >= cx - col_half) & (cols < cx - col_half + col_size)  # [B or 1, W]
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B or 1, 1, H, W]
        if self.fill == "black":
            return x.masked_fill(mask, 0.0), self.one_hot(y)
        colour = self.data_mean.to(x).view(1, c, 1, 1)
        return torch.where(mask, colour, x), self.one_hot(y)


@register
class MaxUp(Defense):
    """MaxUp (Gong et al. 2020): m augmented draws of each image, train on the per-image worst
    (highest) loss; plain training before ``start_epoch`` (the paper's late start, 5 epochs).
    The draws come from any registered defense given as ``inner`` (cutout in the papers).

    ``mode: forest`` reproduces what Geiping et al.'s ``Maxup`` over their in-place ``Cutout``
    computes (JonasGeiping/data-poisoning, ``forest/data/mixing_data_augmentations.py``,
    ``Maxup.forward`` / ``corrected_loss``), which made the papers' MaxUp-cutout rows: each of the
    m trials cuts a box into the *same* batch tensor, so the batch carries all m boxes, it is
    concatenated m times (identical copies), and since cutout returns no mixing weights the loss is
    the plain mean, not the max. Here the m boxes are cut into one batch and the mean loss is taken
    once (the identical copies give the same loss and gradient). Forest is active when
    ``epoch > 5``, i.e. ``start_epoch: 6`` here; its cutout is ``boxes: per_batch, fill: mean`` with
    the box of the (unrecorded) ``strength``: see ``Cutout``."""

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
        "mode": Param(
            "string",
            "worst: per-image worst of m draws (Gong et al., the papers' text); "
            "forest: m cutouts in one batch, mean loss (the code behind the papers' rows)",
            default="worst",
            enum=("worst", "forest"),
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.m = self.spec["m"]
        self.start_epoch = self.spec["start_epoch"]
        self.mode = self.spec["mode"]
        self.inner = build(self.spec["inner"], num_classes, name=f"{self.name}.inner", seed=seed + 1)
        if self.mode == "forest" and self.inner.type_name != "cutout":
            raise ConfigError(
                f"defenses.{self.name}.mode: 'forest' reproduces forest's in-place cutout; inner must be "
                f"cutout, not {self.inner.type_name!r}"
            )

    def bind_data_mean(self, mean):
        super().bind_data_mean(mean)
        self.inner.bind_data_mean(mean)

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
        draws = self.m if self.mode == "worst" else 1
        return [(1, n_train * plain), (k, n_train * (epochs - plain) * draws)]

    def loss(self, forward: Forward, x, y, epoch):
        if epoch < self.start_epoch:
            return super().loss(forward, x, y, epoch)
        if self.mode == "forest":
            cut, soft = x, None
            for _ in range(self.m):
                cut, soft = self.inner.mix(cut, y, epoch)
            return soft_cross_entropy(forward(self.add_noise(self.inner.add_noise(cut))), soft)
        draws = [self.transform_draw(x, y, epoch) for _ in range(self.m)]
        logits = forward(torch.cat([d[0] for d in draws]))
        losses = soft_cross_entropy(logits, torch.cat([d[1] for d in draws]), reduction="none")
        return losses.view(self.m, x.shape[0]).max(dim=0).values.mean()

    def transform_draw(self, x, y, epoch):
        x, soft = self.inner.transform(x, y, epoch)
        return self.add_noise(x), soft
