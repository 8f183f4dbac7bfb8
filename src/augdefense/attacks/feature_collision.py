"""Poison Frogs / feature collision (Shafahi et al. 2018), in the setting of Schwarzschild et al.
2020 ("Just how toxic is data poisoning?") that DP-InstaHide §2.2 / appendix A evaluates.

Per seed: a random target class, one random test image t of it as the target (left out of clean
accuracy), a random attacker class != target class, and ``n_poisons`` random training images b of
the attacker class as bases (labels unchanged). Each poison moves towards the target in feature
space (f: penultimate-layer features) inside the benchmark's l-inf ball around b and the valid pixel
range. Two updates:

``update: linf`` (default) is the branch the benchmark ran (aks2203/poisoning-benchmark,
``poison_crafting/craft_poisons_fc.py::main`` without ``--l2``, as ``launch/craft_poisons.sh``
calls it): start at the watermarked image ``0.3 t + 0.7 b`` (not projected), then repeat a plain
gradient step on ``||f(x) - f(t)||^2``, clamp into the ball and [0, 1]. Its accept test is lagged:
the objective it compares is the feature loss at the *current* x (before the step) against the
last accepted value; when that loss rose, the candidate is rejected and the step shrinks x0.2 - and
since x then stays where it is, every later candidate is rejected too (the poison stays at the
first point whose loss rose). That is what produced the benchmark's numbers, so it is reproduced
here as written. There is no beta term in this branch.

``update: proximal`` is Shafahi et al.'s forward-backward splitting (Algorithm 1), the benchmark's
``--l2`` branch plus the l-inf projection: minimise ``||f(x) - f(t)||^2 + (beta / 2) ||x - b||^2``
by a forward step x_hat = x - lr * grad, a backward (proximal) step
x = (x_hat + lr * beta * b) / (1 + lr * beta), and projection; a candidate whose full objective is
higher than the current one is rejected (step x0.2) - a true line search. As the ball is centred on
b and everything is coordinate-wise, proximal step + projection is the proximal map of the beta
term plus the constraint.

Both stop a poison once an accepted step moves it by less than 1e-5 relative.

The poisons are stored as uint8 pixels truncated as the benchmark's ``ToPILImage`` does
(``quantize: truncate``, the default; ``round`` is the option), then clamped into the ball.

This module also holds what the targeted transfer attacks (FC and CP) share: ``draw_targeted`` (the
per-seed target, attacker class and bases: ``draws.targeted``), ``targeted_artifact`` and the
``TargetedTransferAttack`` base class. The generic helpers (``frozen``, ``project``, ``quantize``,
``craft_frozen``, the common parameters) are in ``augdefense.attacks.constraints``.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from augdefense.attacks import draws, register
from augdefense.attacks.base import Attack, CraftingContext
from augdefense.attacks.constraints import EPS_PARAM, N_POISONS_PARAM, QUANTIZE_PARAM, craft_frozen, project
from augdefense.errors import ConfigError
from augdefense.params import Param

log = logging.getLogger("augdefense.attacks")

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def draw_targeted(dataset, seed: int, n_poisons: int, name: str) -> dict:
    """The seed's target image, attacker class (the goal) and bases: ``draws.targeted``, so the
    targeted attacks of one seed, gradient matching included, share their target."""
    drawn = draws.targeted(dataset, seed, n_poisons, f"attacks.{name}.n_poisons")
    return {
        "target_class": drawn["target_class"],
        "target_index": drawn["target_index"],
        "attacker_class": drawn["goal_class"],
        "indices": drawn["indices"],
    }


def targeted_artifact(dataset, draw: dict, poisons: torch.Tensor, info: dict) -> dict:
    """The artifact of a targeted (FC / CP) attack: poisons in place of the bases, labels unchanged,
    the target image as the single evaluation input whose goal is the attacker class."""
    indices = draw["indices"]
    return {
        "train_indices": indices,
        "train_images": poisons,
        "train_labels": dataset.train_labels[indices].clone(),
        "eval_images": dataset.test_images[draw["target_index"]][None].clone(),
        "eval_labels": torch.tensor([draw["target_class"]], dtype=torch.long),
        "eval_goals": torch.tensor([draw["attacker_class"]], dtype=torch.long),
        "clean_exclude": torch.tensor([draw["target_index"]], dtype=torch.long),
        "info": {
            "target_class": draw["target_class"],
            "target_index": draw["target_index"],
            "attacker_class": draw["attacker_class"],
            "n_poisons": len(indices),
            **info,
        },
    }


class TargetedTransferAttack(Attack):
    """Feature collision and convex polytope: the seed's targeted draw (``draw_targeted``), the bases
    optimised against the frozen crafting model (``optimise``, through ``craft_frozen``), and the
    targeted artifact."""

    description: ClassVar[str]  # for the error messages: "feature collision"
    params = {"eps": EPS_PARAM, "n_poisons": N_POISONS_PARAM, "quantize": QUANTIZE_PARAM}

    def __init__(self, spec, name=""):
        super().__init__(spec, name)
        self.eps = float(self.spec["eps"])
        self.n_poisons = self.spec["n_poisons"]
        self.quantization = self.spec["quantize"]

    @abstractmethod
    def optimise(self, context: CraftingContext, target: torch.Tensor, bases: torch.Tensor) -> dict:
        """Craft from the float ``target`` [C,H,W] and ``bases`` [N,C,H,W] in [0, 1] on the crafting
        device; the result's ``poisons`` are float images in [0, 1]."""

    @abstractmethod
    def summary(self, result: dict) -> dict:
        """The ``info`` entries the optimiser's result adds to the artifact (losses, settings)."""

    def craft(self, dataset, seed: int, context: CraftingContext | None = None) -> dict:
        if context is None:
            raise ConfigError(f"attacks.{self.name}: {self.description} needs a crafting model")
        draw = draw_targeted(dataset, seed, self.n_poisons, self.name)
        target = (dataset.test_images[draw["target_index"]].float() / 255).to(context.device)
        clean = dataset.train_images[draw["indices"]]
        poisons, result = craft_frozen(
            context, clean, self.eps, lambda bases: self.optimise(context, target, bases), self.quantization
        )
        info = {**self.summary(result), "quantize": self.quantization}
        return targeted_artifact(
            dataset, draw, poisons, {**info, "attack": self.name, "type": self.type_name, "seed": seed}
        )


UPDATES = ("linf", "proximal")


def feature_collision(
    features: FeatureFn,
    target: torch.Tensor,
    bases: torch.Tensor,
    eps: float,
    *,
    update: str = "linf",
    beta: float = 4.0,
    step_size: float = 0.001,
    iterations: int = 120,
    watermark: float = 0.3,
    tol: float = 1e-5,
) -> dict:
    """Craft one poison per base for float images in [0, 1]: ``target`` [C,H,W] or [1,C,H,W],
    ``bases`` [N,C,H,W], ``eps`` in [0, 1] units. ``features`` maps images in [0, 1] to features
    (the caller freezes the model: see ``frozen``). The poisons are optimised independently (in one
    batch), each with its own step size; ``update`` is ``linf`` or ``proximal`` (module docstring);
    ``beta`` is used by ``proximal`` only.

    Returns ``poisons`` [N,C,H,W] (inside the ball), ``history`` (mean ||f(x) - f(t)||^2 of the
    current poisons, before the first and after every iteration), ``objective`` (mean of each
    poison's last accepted objective, same points; non-increasing) and ``step_sizes`` (each
    poison's final step size)."""
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}; got {update!r}")
    target = target if target.dim() == 4 else target[None]
    bases = bases.detach()
    with torch.no_grad():
        target_feat = features(target).detach()

    def feature_loss(x: torch.Tensor):
        x = x.detach().requires_grad_(True)
        dist = (features(x) - target_feat).pow(2).flatten(1).sum(1)
        (grad,) = torch.autograd.grad(dist.sum(), x)
        return dist.detach(), grad

    steps = _linf_steps if update == "linf" else _proximal_steps
    return steps(
        feature_loss, watermark * target + (1 - watermark) * bases, bases, eps, beta, step_size, iterations, tol
    )


def _relative_move(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp(min=1e-12)


def _linf_steps(feature_loss, start, bases, eps, beta, step_size, iterations, tol) -> dict:
    """craft_poisons_fc.py's default loop, per poison: obj = feature loss at the current x; if it
    exceeds the last accepted obj, shrink the step and keep x; else accept the clamped gradient step
    (``objective_vals = [10e8]`` at the start, so the first step is always taken)."""
    x = start.detach()
    lr = torch.full((len(bases),), float(step_size), device=bases.device)
    accepted = torch.full((len(bases),), 1e9, device=bases.device)
    done = torch.zeros(len(bases), dtype=torch.bool, device=bases.device)
    dist, grad = feature_loss(x)
    history, objective = [float(dist.mean())], []
    for _ in range(iterations):
        if bool(done.all()):
            break
        candidate = project(x - lr.view(-1, 1, 1, 1) * grad, bases, eps)
        active = ~done
        reject = active & (dist > accepted)
        accept = active & ~reject
        lr = torch.where(reject, lr * 0.2, lr)
        done = done | (accept & (_relative_move(candidate, x) < tol))
        accepted = torch.where(accept, dist, accepted)
        x = torch.where(accept.view(-1, 1, 1, 1), candidate, x)
        objective.append(float(accepted.mean()))
        dist, grad = feature_loss(x)
        history.append(float(dist.mean()))
    objective = [objective[0] if objective else history[0]] + objective
    return {"poisons": x.detach(), "history": history, "objective": objective, "step_sizes": lr.tolist()}


def _proximal_steps(feature_loss, start, bases, eps, beta, step_size, iterations, tol) -> dict:
    """Shafahi et al.'s forward-backward splitting with a line search on the full objective."""

    def evaluate(x):
        dist, grad = feature_loss(x)
        return dist + beta / 2 * (x.detach() - bases).pow(2).flatten(1).sum(1), dist, grad

    x = project(start, bases, eps)
    obj, dist, grad = evaluate(x)
    lr = torch.full((len(bases),), float(step_size), device=bases.device)
    done = torch.zeros(len(bases), dtype=torch.bool, device=bases.device)
    history, objective = [float(dist.mean())], [float(obj.mean())]
    for _ in range(iterations):
        if bool(done.all()):
            break
        lam = lr.view(-1, 1, 1, 1)
        x_hat = x - lam * grad  # forward step on the feature term
        candidate = project((x_hat + lam * beta * bases) / (1 + lam * beta), bases, eps)  # backward step
        c_obj, c_dist, c_grad = evaluate(candidate)
        active = ~done
        accept = active & (c_obj <= obj)
        lr = torch.where(active & ~accept, lr * 0.2, lr)
        done = done | (accept & (_relative_move(candidate, x) < tol))
        keep = accept.view(-1, 1, 1, 1)
        x = torch.where(keep, candidate, x)
        grad = torch.where(keep, c_grad, grad)
        obj, dist = torch.where(accept, c_obj, obj), torch.where(accept, c_dist, dist)
        history.append(float(dist.mean()))
        objective.append(float(obj.mean()))
    return {"poisons": x.detach(), "history": history, "objective": objective, "step_sizes": lr.tolist()}


@register
class FeatureCollision(TargetedTransferAttack):
    type_name = "feature_collision"
    description = "feature collision"
    # Defaults of the benchmark's craft_poisons_fc.py ("all the defaults are set to the values that
    # were used", poison_crafting/README.md); beta 4.0 is its value for models fed normalised
    # inputs, as CraftingContext.features does.
    params = {
        **TargetedTransferAttack.params,
        "iterations": Param("integer", "forward-backward steps (120 in the benchmark)", default=120, minimum=1),
        "step_size": Param(
            "number",
            "initial step size in [0, 1] pixel units (0.001 in the benchmark)",
            default=0.001,
            exclusive_minimum=0,
        ),
        "update": Param(
            "string",
            "linf: the benchmark's default branch (gradient step, clamp, lagged accept test); "
            "proximal: Shafahi et al.'s forward-backward splitting with the beta term (--l2 branch)",
            default="linf",
            enum=UPDATES,
        ),
        "beta": Param(
            "number",
            "weight of the proximity term in update: proximal (4.0 in the benchmark's --l2 branch)",
            default=4.0,
            minimum=0,
        ),
        "watermark": Param(
            "number",
            "opacity of the target in the start point (0.3 in the benchmark)",
            default=0.3,
            minimum=0,
            exclusive_maximum=1,
        ),
    }

    def __init__(self, spec, name=""):
        super().__init__(spec, name)
        self.iterations = self.spec["iterations"]
        self.step_size = float(self.spec["step_size"])
        self.update = self.spec["update"]
        self.beta = float(self.spec["beta"])
        self.watermark = float(self.spec["watermark"])

    def optimise(self, context, target, bases):
        result = feature_collision(
            context.features,
            target,
            bases,
            self.eps / 255,
            update=self.update,
            beta=self.beta,
            step_size=self.step_size,
            iterations=self.iterations,
            watermark=self.watermark,
        )
        log.info("feature collision: feature distance %.4f -> %.4f", result["history"][0], result["history"][-1])
        return result

    def summary(self, result):
        return {
            "feature_distance_first": result["history"][0],
            "feature_distance": result["history"][-1],
            "update": self.update,
        }
