"""Witches' Brew (Geiping et al. 2020): clean-label targeted poisoning by gradient matching.

Per seed: a random target class, one random test image of it as the target (left out of clean
accuracy), a random intended class != target class, and ``budget`` x N random training images of
the intended class as poisons (labels unchanged). Each poison gets a perturbation delta,
||delta||_inf <= eps, that minimises

    1 - cos( grad_theta L(f(aug(x + delta)), y),  grad_theta L(f(target), intended) )

over all parameters of a crafting model trained on clean data, so that training on the poisons
pushes the model the way training on the mislabelled target would. As in Geiping et al.'s code
(JonasGeiping/data-poisoning, ``forest/witchcoven/witch_base.py``: ``_initialize_brew``,
``_run_trial``; ``forest/data/kettle_base.py``: ``initialize_poison``): delta lives in normalised
units (pixels / the channel's std); its start is randn x eps, clipped to the ball; the sign of each
full pass's gradient goes to Adam with lr tau x (batch / 512) ("Rule 2", tau = ``lr`` = 0.1 in
normalised units, i.e. a pixel step of 0.1 x the channel's std, about 0.4 eps at eps = 16/255 on
CIFAR-10); the step decays x0.1 at 3/8, 5/8 and 7/8 of the iterations; after every step delta is
projected onto the eps-ball and the valid pixel range; a differentiable shift (+ flip) augments
the poisons; of R restarts, the one with the lowest matching loss in its last pass is kept.

Adaptive (``adaptive: true``): the crafting model was trained under the victim's defense, and the
poison loss goes through that defense's own ``loss`` hook (its mixing, noise, MaxUp). Against
batch DP-SGD the poison gradient is matched as it is (``dp_gradients: plain``, the default): that is
all forest could have run for the papers' adaptive DP-SGD cells - its
``WitchGradientMatchingNoisy._hide_gradient`` (``forest/witchcoven/witch_matching.py``) clips out of
place (``grad.mul(clip_coef)``, a no-op) and its noise branch refers to undefined names (``kettle``,
``defs``) and raises NameError, so forest's adaptive attack on DP-SGD is plain gradient matching on
a crafting model trained under DP-SGD (``forest/victims/training.py::run_step`` applies the clip and
noise to clean training when ``adaptive_attack`` is set). ``dp_gradients: clip_noise`` (ours, an
option) also clips and noises the poison gradient inside the crafting loop, as training does
(the defense's ``crafting_gradients`` hook).
``control: true`` draws the same target and intended class but poisons nothing.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from augdefense.attacks import draws, register
from augdefense.attacks.base import Attack, CraftingContext
from augdefense.attacks.constraints import quantize_delta
from augdefense.config import budget_count
from augdefense.errors import ConfigError
from augdefense.params import Param

log = logging.getLogger("augdefense.attacks")


def differentiable_shift_flip(x: torch.Tensor, shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random sub-pixel translation of up to ``shift`` pixels (and horizontal flips), through
    grid_sample so gradients reach the perturbation (Geiping et al.'s differentiable augmentation,
    ``RandomTransform``). The border pads with zeros, as the victim's random crop does (black, in
    these [0, 1] images; forest pads normalised images, i.e. with the mean colour)."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if flip:
        signs = torch.randint(0, 2, (b,), generator=generator).to(x.device) * 2 - 1
        theta[:, 0, 0] = signs.float()
    if shift > 0:
        offsets = (torch.rand(b, 2, generator=generator).to(x.device) * 2 - 1) * shift
        theta[:, 0, 2] = offsets[:, 0] * 2 / w
        theta[:, 1, 2] = offsets[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _flat_cosine_loss(grads: list[torch.Tensor], target: list[torch.Tensor], target_norm: torch.Tensor) -> torch.Tensor:
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return 1 - dot / (norm * target_norm + 1e-12)


def target_gradient(context: CraftingContext, params: list, target_image: torch.Tensor, intended: int):
    """The gradient of the target's loss under the intended label (what the poisons' gradient must
    match), and its norm."""
    device = context.device
    target_loss = F.cross_entropy(context.logits(target_image.to(device)), torch.tensor([intended], device=device))
    grad = [g.detach() for g in torch.autograd.grad(target_loss, params)]
    return grad, torch.sqrt(sum(g.pow(2).sum() for g in grad))


DP_GRADIENTS = ("plain", "clip_noise")


def matching_loss(
    context: CraftingContext,
    params: list,
    x: torch.Tensor,
    y: torch.Tensor,
    target: tuple,
    dp_gradients: str = "plain",
):
    """1 - cosine between the poisons' parameter gradient and the target's (``target_gradient``),
    differentiable in ``x``; through the crafting defense's loss hook when it has one (adaptive
    crafting), and with ``dp_gradients: clip_noise`` through its gradient hook too (DP-SGD's clip
    and noise; see the module docstring)."""
    defense = context.defense
    if defense is None:
        poison_loss = F.cross_entropy(context.logits(x), y)
    else:
        poison_loss = defense.loss(context.logits, x, y, epoch=10**6)  # late epoch: MaxUp's warm-up is over
    grads = torch.autograd.grad(poison_loss, params, create_graph=True)
    if defense is not None and dp_gradients == "clip_noise":
        grads = defense.crafting_gradients(grads)
    return _flat_cosine_loss(grads, *target)


INITS = ("randn", "uniform")


def initial_delta(images: torch.Tensor, eps: float, generator: torch.Generator, init: str = "randn") -> torch.Tensor:
    """A restart's random start in pixel units, inside the eps-ball: Geiping et al.'s randn x eps
    clipped to the ball (``randn``), or uniform in the ball (``uniform``). Like theirs, not yet
    projected into the pixel range (the first step's projection does that)."""
    noise = (
        torch.randn(images.shape, generator=generator)
        if init == "randn"
        else torch.rand(images.shape, generator=generator) * 2 - 1
    )
    return (noise * eps).clamp_(-eps, eps).to(images.device)


def brew(
    context: CraftingContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    target_image: torch.Tensor,
    intended: int,
    *,
    eps: float,
    iterations: int,
    restarts: int,
    lr: float = 0.1,
    batch_size: int = 512,
    shift: int = 0,
    flip: bool = False,
    seed: int = 0,
    init: str = "randn",
    dp_gradients: str = "plain",
) -> dict:
    """Craft perturbations for float ``images`` in [0, 1] (on any device); ``eps`` in [0, 1] units;
    ``lr`` is Geiping et al.'s tau, in normalised units; ``dp_gradients`` as ``matching_loss``
    (see the module's docstring).

    Returns ``delta`` in pixel units (of the restart with the lowest final loss), ``restart_losses``
    (final loss of each restart), ``history`` (mean matching loss per iteration of the kept restart)."""
    model, device = context.model, context.device
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    images, labels = images.to(device), labels.to(device)
    target = target_gradient(context, params, target_image, intended)
    generator = torch.Generator().manual_seed(seed)

    std = context.normalizer.std.to(device)  # [1, C, 1, 1]: delta is optimised in normalised units
    bound, floor, ceiling = eps / std, -images / std, (1 - images) / std

    best, restart_losses = None, []
    for restart in range(restarts):
        delta = initial_delta(images, eps, generator, init) / std
        delta.requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=lr * batch_size / 512)
        milestones = [int(iterations // 2.667), int(iterations // 1.6), int(iterations // 1.142)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
        history = []
        for _ in range(iterations):
            delta.grad = torch.zeros_like(delta)
            total = 0.0
            for begin in range(0, len(images), batch_size):
                sl = slice(begin, begin + batch_size)
                x = images[sl] + delta[sl] * std
                if shift or flip:
                    x = differentiable_shift_flip(x, shift, flip, generator)
                loss = matching_loss(context, params, x, labels[sl], target, dp_gradients)
                (delta_grad,) = torch.autograd.grad(loss, delta)
                delta.grad += delta_grad
                total += float(loss.detach()) * len(images[sl])
            delta.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                delta.copy_(torch.maximum(torch.minimum(delta, bound), -bound))
                delta.copy_(torch.maximum(torch.minimum(delta, ceiling), floor))
            history.append(total / len(images))
        final = history[-1] if history else math.inf
        log.info(
            "restart %d/%d: matching loss %.4f -> %.4f",
            restart + 1,
            restarts,
            history[0] if history else math.nan,
            final,
        )
        restart_losses.append(final)
        if best is None or final < best["loss"]:
            best = {"loss": final, "delta": (delta.detach() * std).clone(), "history": history, "restart": restart}
    return {
        "delta": best["delta"],
        "history": best["history"],
        "restart": best["restart"],
        "restart_losses": restart_losses,
    }


@register
class GradientMatching(Attack):
    type_name = "gradient_matching"
    params = {
        "eps": Param(
            "number",
            "l-inf bound in 1/255 pixel units (16 in the papers)",
            default=16,
            exclusive_minimum=0,
            maximum=255,
        ),
        "budget": Param(
            "number",
            "share of the training set poisoned (0.01 in the papers)",
            default=0.01,
            exclusive_minimum=0,
            maximum=1,
        ),
        "iterations": Param("integer", "signed-Adam steps per restart (250 in the papers)", default=250, minimum=1),
        "restarts": Param(
            "integer", "restarts; the lowest final matching loss is kept (8 in the papers)", default=8, minimum=1
        ),
        "lr": Param(
            "number",
            "signed-Adam step in normalised units (Geiping et al.'s tau: 0.1; a pixel step of tau x the channel's std)",
            default=0.1,
            exclusive_minimum=0,
        ),
        "batch_size": Param(
            "integer", "poisons per crafting step (Geiping et al.'s pbatch: 512)", default=512, minimum=1
        ),
        "augment": Param("boolean", "differentiable shift/flip while crafting, as the victim's recipe", default=True),
        "adaptive": Param(
            "boolean", "craft against a model trained under the victim's defense, through it", default=False
        ),
        "dp_gradients": Param(
            "string",
            "adaptive crafting against batch DP-SGD: plain: match the poison gradient as it is (what forest ran: "
            "its noisy witch's clip is a no-op and its noise raises); clip_noise: clip and noise it inside the "
            "crafting loop as training does",
            default="plain",
            enum=DP_GRADIENTS,
        ),
        "control": Param("boolean", "poison nothing (the clean control)", default=False),
        "init": Param(
            "string",
            "a restart's start: Geiping et al.'s randn x eps clipped to the ball, or uniform",
            default="randn",
            enum=INITS,
        ),
    }

    def __init__(self, spec, name=""):
        super().__init__(spec, name)
        self.eps = float(self.spec["eps"])
        self.budget = float(self.spec["budget"])
        self.iterations = self.spec["iterations"]
        self.restarts = self.spec["restarts"]
        self.lr = float(self.spec["lr"])
        self.batch_size = self.spec["batch_size"]
        self.augment = self.spec["augment"]
        self.control = self.spec["control"]

    def draw(self, dataset, seed: int) -> dict:
        """The seed's target image, intended class and poison indices (draws.targeted: shared by every
        targeted attack and by the control)."""
        n_poison = budget_count(self.budget, len(dataset.train_labels))
        if n_poison < 1:
            raise ConfigError(
                f"attacks.{self.name}.budget: {self.budget} x {len(dataset.train_labels)} rounds to no poison at all"
            )
        draw = draws.targeted(dataset, seed, n_poison, f"attacks.{self.name}.budget")
        return {
            "target_class": draw["target_class"],
            "target_index": draw["target_index"],
            "intended_class": draw["goal_class"],
            "indices": draw["indices"],
        }

    def craft(self, dataset, seed: int, context: CraftingContext | None = None) -> dict:
        draw = self.draw(dataset, seed)
        target_image = dataset.test_images[draw["target_index"]][None]
        indices = draw["indices"]
        info = {
            "target_class": draw["target_class"],
            "intended_class": draw["intended_class"],
            "target_index": draw["target_index"],
            "attack": self.name,
            "type": self.type_name,
            "seed": seed,
            "adaptive": self.spec["adaptive"],
        }
        if self.control:
            indices = indices[:0]
            info.update(n_poisons=0)
            poisons = dataset.train_images[indices].clone()
        else:
            if context is None:
                raise ConfigError(f"attacks.{self.name}: gradient matching needs a crafting model")
            recipe = context.recipe
            result = brew(
                context,
                dataset.train_images[indices].float() / 255,
                dataset.train_labels[indices],
                target_image.float() / 255,
                draw["intended_class"],
                eps=self.eps / 255,
                iterations=self.iterations,
                restarts=self.restarts,
                lr=self.lr,
                batch_size=self.batch_size,
                shift=recipe.crop_pad if (self.augment and recipe) else 0,
                flip=bool(self.augment and recipe and recipe.flip),
                seed=seed,
                init=self.spec["init"],
                dp_gradients=self.spec["dp_gradients"],
            )
            poisons = quantize_delta(dataset.train_images[indices], result["delta"], self.eps)
            info.update(
                n_poisons=len(indices),
                matching_loss_first=result["history"][0],
                matching_loss=result["history"][-1],
                kept_restart=result["restart"],
                restart_losses=result["restart_losses"],
            )
        return {
            "train_indices": indices,
            "train_images": poisons,
            "train_labels": dataset.train_labels[indices].clone(),
            "eval_images": target_image.clone(),
            "eval_labels": torch.tensor([draw["target_class"]]),
            "eval_goals": torch.tensor([draw["intended_class"]]),
            "clean_exclude": torch.tensor([draw["target_index"]]),
            "info": info,
        }
