"""DP-SGD as the papers ran it (DP-InstaHide appendix A.2; Geiping et al.): the *mini-batch*
gradient is clipped to norm ``clip`` and Gaussian noise of std ``clip x noise`` is added to it at
every step. Per-sample clipping is impossible with BatchNorm, which is why the papers did this;
the variant carries no formal privacy guarantee (there is no per-sample sensitivity bound)."""

from __future__ import annotations

import torch

from augdefense.defenses import register
from augdefense.defenses.base import Defense


@register
class BatchDPSGD(Defense):
    type_name = "dpsgd_batch"
    params = {
        "clip": ((int, float), lambda v: v > 0, "> 0 (gradient norm bound; 1 in the papers)"),
        "noise": ((int, float), lambda v: v >= 0, ">= 0 (noise std as a multiple of clip; 1e-4 to 1e-2 in the papers)"),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.clip = float(spec.get("clip", 1.0))
        self.noise = float(spec.get("noise", 1e-3))

    def process_gradients(self, model: torch.nn.Module) -> None:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.clip)
        if self.noise > 0:
            for p in params:
                p.grad.add_(torch.randn_like(p.grad), alpha=self.clip * self.noise)
