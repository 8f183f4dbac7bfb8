"""What the optimisation-based attacks share: common parameters, the l-inf ball, uint8 quantisation,
frozen models, and ``craft_frozen``: crafting float poisons against a frozen model and storing them as
uint8 pixels."""

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
QUANTIZATIONS = ("truncate", "round")
# The benchmark saves every poison through transforms.ToPILImage, whose float path is
# pic.mul(255).byte(): truncation (craft_poisons_fc.py, _cp.py, _htbd.py, _clbd.py, ``main``).
QUANTIZE_PARAM = Param(
    "string",
    "how the float poisons become uint8 pixels: truncate (the benchmark saves them through ToPILImage, "
    "mul(255).byte()) or round to the nearest level",
    default="truncate",
    enum=QUANTIZATIONS,
)


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


def _round_into_ball(base: torch.Tensor, levels: torch.Tensor, eps: float, mode: str = "round") -> torch.Tensor:
    """Round float pixel ``levels`` (0..255 scale) to the nearest integer (``mode: round``) or
    towards zero (``truncate``), then clamp them in integer space into the eps-ball (``eps`` in
    1/255 units) around the int32 ``base`` and into [0, 255], so quantisation can never leave the ball."""
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantisation must be one of {QUANTIZATIONS}; got {mode!r}")
    bound = int(math.floor(eps + 1e-9))
    levels = torch.round(levels) if mode == "round" else torch.trunc(levels)
    levels = torch.clamp(levels.to(torch.int32), min=base - bound, max=base + bound)
    return levels.clamp(0, 255).to(torch.uint8)


def quantize(clean: torch.Tensor, poisons: torch.Tensor, eps: float, mode: str = "round") -> torch.Tensor:
    """uint8 poisons from uint8 ``clean`` bases and float ``poisons`` in [0, 1]: ``poisons x 255``
    rounded to the nearest level (``mode: round``) or truncated as ``ToPILImage`` does
    (``truncate``), then clamped in integer space into the eps-ball (``eps`` in 1/255 units) around
    the base and into [0, 255], so quantisation can never leave the ball."""
    return _round_into_ball(clean.to(torch.int32), poisons.detach().cpu().float() * 255, eps, mode)


def quantize_delta(clean: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``quantize``, from uint8 ``clean`` and a float perturbation ``delta`` of it (in [0, 1]
    units) instead of the poisons themselves."""
    base = clean.to(torch.int32)
    return _round_into_ball(base, base.float() + delta.detach().cpu().float() * 255, eps)


def craft_frozen(context, clean: torch.Tensor, eps: float, optimise, mode: str = "round") -> tuple[torch.Tensor, dict]:
    """What the optimisation-based transfer attacks share: ``optimise`` receives the uint8 ``clean``
    bases as float images in [0, 1] on the crafting device and returns a dict whose ``poisons`` are
    float images in [0, 1]; it runs with the crafting model frozen (``frozen``) and the normaliser on
    the device. Returns the poisons quantised into the eps-ball (``quantize`` with ``mode``) and
    the optimiser's dict."""
    device = context.device
    context.normalizer.to(device)
    with frozen(context.model):
        result = optimise((clean.float() / 255).to(device))
    return quantize(clean, result["poisons"], eps, mode), result
