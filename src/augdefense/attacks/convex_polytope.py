"""Convex Polytope (Zhu et al. 2019), in the setting of Schwarzschild et al. 2020 that DP-InstaHide
§2.2 / appendix A evaluates.

Per seed: the same draw as feature collision (a random target test image, a random attacker
class != target class, ``n_poisons`` random training images of the attacker class as bases; labels
unchanged). The poisons x_j (each in the l-inf ball of radius eps around its base, in [0, 1]) and
convex coefficients c (on the probability simplex, one vector per feature extractor) minimise

    sum_m  1/2 ||f_m(t) - sum_j c_mj f_m(x_j)||^2 / ||f_m(t)||^2

so the target's features lie inside the convex polytope of the poisons' features, for every
extractor f_m of the ensemble. Zhu et al.'s Algorithm 1, as in the benchmark's
``ConvexPolytope/trainer.py``: each iteration computes the poisons' features, solves for the
coefficients (projected gradient descent on the least-squares problem, each step projected onto
the simplex, warm-started from the previous coefficients, until they move by less than ``tol``
relative), then takes one Adam step on the poisons and projects them back onto their balls.

The benchmark optimises the normalised images with Adam; Adam's step does not depend on the
gradient's scale, so an Adam step of ``lr`` on a normalised image is a step of ``lr * std`` per
channel in [0, 1] pixels. ``scale`` (the crafting normaliser's per-channel std: in the transfer
setting the benchmark's CIFAR-10 constants, ``learning_module.data_mean_std_dict``) reproduces that:
the optimiser works on x / scale. The poisons are stored truncated, as the benchmark's
``ToPILImage`` saves them (``quantize``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from augdefense.attacks import register
from augdefense.attacks.constraints import project
from augdefense.attacks.feature_collision import FeatureFn, TargetedTransferAttack
from augdefense.params import Param

log = logging.getLogger("augdefense.attacks")


def simplex_projection(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each vector along the last dimension onto the probability simplex
    {w : w >= 0, sum w = 1} (the sort-based algorithm: Held et al. 1974, Duchi et al. 2008)."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    excess = u.cumsum(-1) - 1
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    # u_k - excess_k / k > 0 holds for k = 1..rho and fails after: rho is the number that hold.
    rho = (u - excess / k > 0).sum(-1, keepdim=True)
    theta = excess.gather(-1, rho - 1) / rho.to(v.dtype)
    return torch.clamp(v - theta, min=0)


def simplex_least_squares(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, tol: float = 1e-6, max_iters: int = 10000
) -> torch.Tensor:
    """min_c 1/2 ||a^T c - b||^2 over the probability simplex by projected gradient descent
    (Zhu et al.'s inner loop): ``a`` [n, d] (one row per poison), ``b`` [d], start ``c`` [n] on the
    simplex. Step 1/L with L = ||a||_2^2, the gradient's Lipschitz constant, so every step
    decreases the objective; stops when c moves by less than ``tol`` relative."""
    gram, atb = a @ a.T, a @ b
    step = 1.0 / torch.linalg.matrix_norm(a, ord=2).pow(2).clamp(min=1e-12)
    for _ in range(max_iters):
        new = simplex_projection(c - step * (gram @ c - atb))
        moved = torch.linalg.vector_norm(new - c) / torch.linalg.vector_norm(c).clamp(min=1e-8)
        c = new
        if moved < tol:
            break
    return c


def convex_polytope(
    feature_fns: Sequence[FeatureFn],
    target: torch.Tensor,
    bases: torch.Tensor,
    eps: float,
    *,
    iterations: int = 1200,
    lr: float = 0.04,
    momentum: float = 0.9,
    scale: torch.Tensor | None = None,
    tol: float = 1e-6,
    coeff_iters: int = 10000,
) -> dict:
    """Craft convex-polytope poisons for float images in [0, 1]: ``target`` [C,H,W] or [1,C,H,W],
    ``bases`` [N,C,H,W], ``eps`` in [0, 1] units, ``feature_fns`` a list of feature extractors
    (an ensemble; the caller freezes their models: see ``frozen``), ``scale`` an optional
    per-channel factor (see the module docstring; None: Adam steps of ``lr`` in pixel units).

    Returns ``poisons`` (inside the ball), ``coefficients`` (one simplex vector [N] per extractor),
    ``history`` (the loss at every iteration, before its poison step) and ``coefficient_history``
    (the coefficients of every iteration, [iterations, n_extractors, N])."""
    if isinstance(feature_fns, (list, tuple)):
        feature_fns = list(feature_fns)
    else:
        feature_fns = [feature_fns]
    target = target if target.dim() == 4 else target[None]
    bases = bases.detach()
    n = len(bases)
    shape = (1, -1, 1, 1)
    scale = torch.ones(1, device=bases.device) if scale is None else scale.to(bases.device).float()
    scale = scale.view(shape) if scale.numel() > 1 else scale.view(1, 1, 1, 1)
    with torch.no_grad():
        target_feats = [f(target).detach().flatten() for f in feature_fns]
    coeffs = [torch.full((n,), 1.0 / n, device=bases.device) for _ in feature_fns]
    z = (bases / scale).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=(momentum, 0.999))
    history, coefficient_history = [], []
    for _ in range(iterations):
        optimizer.zero_grad()
        x = z * scale
        loss = 0.0
        for m, f in enumerate(feature_fns):
            feats = f(x).flatten(1)  # [N, d]
            coeffs[m] = simplex_least_squares(feats.detach(), target_feats[m], coeffs[m], tol, coeff_iters)
            residual = target_feats[m] - coeffs[m] @ feats
            loss = loss + 0.5 * residual.pow(2).sum() / target_feats[m].pow(2).sum()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            z.copy_(project(z * scale, bases, eps) / scale)
        history.append(float(loss.detach()))
        coefficient_history.append(torch.stack(coeffs).detach().cpu())
    poisons = project((z * scale).detach(), bases, eps)
    return {
        "poisons": poisons,
        "coefficients": [c.detach().cpu() for c in coeffs],
        "history": history,
        "coefficient_history": torch.stack(coefficient_history)
        if coefficient_history
        else torch.zeros(0, len(feature_fns), n),
    }


@register
class ConvexPolytope(TargetedTransferAttack):
    type_name = "convex_polytope"
    description = "convex polytope"
    # Defaults of the benchmark's craft_poisons_cp.py (poison_crafting/README.md: "all the defaults
    # are set to the values that were used"): Adam, lr 0.04, betas (0.9, 0.999), 1200 iterations,
    # no lr decay, coefficient tolerance 1e-6. (Zhu et al. ran 4000.)
    params = {
        **TargetedTransferAttack.params,
        "iterations": Param("integer", "poison steps (1200 in the benchmark)", default=1200, minimum=1),
        "lr": Param(
            "number", "Adam step on normalised images (0.04 in the benchmark)", default=0.04, exclusive_minimum=0
        ),
    }

    def __init__(self, spec, name=""):
        super().__init__(spec, name)
        self.iterations = self.spec["iterations"]
        self.lr = float(self.spec["lr"])

    def optimise(self, context, target, bases):
        result = convex_polytope(
            [context.features],
            target,
            bases,
            self.eps / 255,
            iterations=self.iterations,
            lr=self.lr,
            scale=context.normalizer.std.flatten(),
        )
        log.info("convex polytope: loss %.4f -> %.4f", result["history"][0], result["history"][-1])
        return result

    def summary(self, result):
        return {
            "polytope_loss_first": result["history"][0],
            "polytope_loss": result["history"][-1],
            "coefficients": result["coefficients"][0].tolist(),
        }
