"""DP-SGD, two ways.

``dpsgd_batch`` is DP-SGD as the papers ran it (DP-InstaHide appendix A.2; Geiping et al.): the *mini-batch*
gradient is clipped to norm ``clip`` and Gaussian noise of std ``clip x noise`` is added to it at
every step. Per-sample clipping is impossible with BatchNorm, which is why the papers did this;
the variant carries no formal privacy guarantee (there is no per-sample sensitivity bound).

``dpsgd_opacus`` is DP-SGD with a guarantee (Abadi et al. 2016) through opacus: per-sample
gradients clipped to ``clip``, Gaussian noise of std ``clip x noise_multiplier`` on their sum, on a
model without BatchNorm (``model.norm: group``); the run records the (epsilon, delta) of opacus's
RDP accountant. The accountant assumes Poisson sampling of batches with rate batch/n; the loop
draws shuffled fixed-size batches, the usual approximation."""

from __future__ import annotations

import torch

from augdefense.defenses import register
from augdefense.defenses.base import Defense
from augdefense.errors import ConfigError
from augdefense.params import Param


def gaussian_like(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Standard normal noise shaped like each tensor, on its device. On a GPU one draw for all of them,
    split (one kernel, not one per parameter); on the CPU one draw per tensor, in order, which keeps the
    numbers of CPU runs made before (a split draw would give other ones there)."""
    if not tensors or tensors[0].device.type == "cpu":
        return [torch.randn_like(t) for t in tensors]
    flat = torch.randn(sum(t.numel() for t in tensors), device=tensors[0].device, dtype=tensors[0].dtype)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


@register
class BatchDPSGD(Defense):
    type_name = "dpsgd_batch"
    params = {
        "clip": Param(
            "number", "bound on the mini-batch gradient's norm (1 in the papers)", default=1.0, exclusive_minimum=0
        ),
        "noise": Param(
            "number", "noise std as a multiple of clip (1e-4 to 1e-2 in the papers)", default=1e-3, minimum=0
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.clip = float(self.spec["clip"])
        self.noise = float(self.spec["noise"])

    def process_gradients(self, model: torch.nn.Module) -> None:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.clip)  # foreach kernels on a GPU (torch's default)
        if self.noise > 0:
            grads = [p.grad for p in params]
            torch._foreach_add_(grads, gaussian_like(grads), alpha=self.clip * self.noise)

    def crafting_gradients(self, grads):
        """The same clip and noise on an adaptive attacker's poison gradient, differentiably (the
        clip scales the gradient, the noise is added): our construction, used only with the
        attack's ``dp_gradients: clip_noise``. forest's ``WitchGradientMatchingNoisy._hide_gradient``
        (``forest/witchcoven/witch_matching.py``) meant to do this, but its clip is out of place
        (``grad.mul``, a no-op) and its noise branch raises NameError; see
        ``augdefense.attacks.gradient_matching``."""
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        scale = torch.clamp(self.clip / (norm + 1e-6), max=1.0)
        return tuple(g * scale + self.clip * self.noise * torch.randn_like(g) for g in grads)


@register
class OpacusDPSGD(Defense):
    type_name = "dpsgd_opacus"
    params = {
        "clip": Param("number", "bound on each per-sample gradient's norm", default=1.0, exclusive_minimum=0),
        "noise_multiplier": Param("number", "noise std as a multiple of clip", default=1.0, minimum=0),
        "delta": Param(
            "number",
            "the delta the accountant's epsilon is reported at",
            default=1e-5,
            exclusive_minimum=0,
            exclusive_maximum=1,
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.clip = float(self.spec["clip"])
        self.noise_multiplier = float(self.spec["noise_multiplier"])
        self.delta = float(self.spec["delta"])

    def check_model(self, model, where="model"):
        batch_norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if batch_norms:
            raise ConfigError(
                f"defenses.{self.name}: per-sample DP-SGD cannot train a model with BatchNorm "
                f"({batch_norms[0]}, ...); set {where}.norm: group"
            )

    def wrap_training(self, model, optimizer, n_train, batch_size):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.check_model(model)
        wrapped = GradSampleModule(model)
        dp_optimizer = DPOptimizer(
            optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.clip, expected_batch_size=batch_size
        )
        return wrapped, dp_optimizer

    def privacy_record(self, n_train, image_shape, epochs, batch_size):
        import math

        from opacus.accountants import RDPAccountant

        record = super().privacy_record(n_train, image_shape, epochs, batch_size)
        if self.noise_multiplier == 0:  # no noise, no guarantee
            return {**record, "dp_epsilon": None, "dp_delta": self.delta}
        accountant = RDPAccountant()
        steps = epochs * math.ceil(n_train / batch_size)
        accountant.history = [(self.noise_multiplier, min(1.0, batch_size / n_train), steps)]
        return {**record, "dp_epsilon": float(accountant.get_epsilon(self.delta)), "dp_delta": self.delta}
