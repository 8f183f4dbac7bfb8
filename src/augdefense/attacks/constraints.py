"""What the optimisation-based attacks share: common parameters, the l-inf ball, uint8 rounding, frozen models."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from augdefense.params import Param

# Schwarzschild et al.'s benchmark (aks2203/poisoning-benchmark, how_to.md): 25 poisons, l-inf
# eps = 8/255 for every attack of the transfer-learning benchmark; a 5x5 trigger for CIFAR-10.
EPS_PARAM = Param(
    "number", "l-inf bound in 1/255 pixel units (8 in the benchmark)", default=8, exclusive_minimum=0, maximum=255
)
N_POISONS_PARAM = Param("integer", "number of poisons (25 in the benchmark)", default=25, minimum=1)
PATCH_SIZE_PARAM = Param("integer", "trigger side in pixels (5 in the benchmark)", default=5, minimum=1)


@contextmanager
def frozen(*models: torch.nn.Module) -> Iterator[None]:
    """Run a block with ``models`` in eval mode and their parameters not requiring grad; restore
    each module's training flag and each parameter's requires_grad afterwards."""
    saved = [
        (m, [(mod, mod.training) for mod in m.modules()], [(p, p.requires_grad) for p in m.parameters()])
        for m in models
    ]
    try:
        for m in models:
            m.eval()
            m.requires_grad_(False)
        yield
    finally:
        for _, modes, flags in saved:
            for mod, training in modes:
                mod.training = training
            for p, flag in flags:
                p.requires_grad_(flag)


def project(x: torch.Tensor, base: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x`` onto the l-inf ball of radius ``eps`` around ``base`` intersected with [0, 1]."""
    return torch.clamp(x, min=(base - eps).clamp(min=0), max=(base + eps).clamp(max=1))


def _round_into_ball(base: torch.Tensor, levels: torch.Tensor, eps: float) -> torch.Tensor:
    """Round float pixel ``levels`` (0..255 scale) to the nearest integer, then clamp them in
    integer space into the eps-ball (``eps`` in 1/255 units) around the int32 ``base`` and into
    [0, 255], so rounding can never leave the ball."""
    bound = int(math.floor(eps + 1e-9))
    levels = torch.clamp(torch.round(levels).to(torch.int32), min=base - bound, max=base + bound)
    return levels.clamp(0, 255).to(torch.uint8)


def quantize(clean: torch.Tensor, poisons: torch.Tensor, eps: float) -> torch.Tensor:
    """uint8 poisons from uint8 ``clean`` bases and float ``poisons`` in [0, 1]: rounded to the
    nearest level, then clamped in integer space into the eps-ball (``eps`` in 1/255 units) around
    the base and into [0, 255], so rounding can never leave the ball."""
    return _round_into_ball(clean.to(torch.int32), poisons.detach().cpu().float() * 255, eps)


def quantize_delta(clean: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``quantize``, from uint8 ``clean`` and a float perturbation ``delta`` of it (in [0, 1]
    units) instead of the poisons themselves."""
    base = clean.to(torch.int32)
    return _round_into_ball(base, base.float() + delta.detach().cpu().float() * 255, eps)
