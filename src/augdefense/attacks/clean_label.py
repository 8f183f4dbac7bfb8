"""Clean-Label Backdoor (Turner et al. 2018, "Clean-label backdoor attacks" / "Label-consistent
backdoor attacks"), in the setting of Schwarzschild et al. 2020 that DP-InstaHide §2.2 /
appendix A evaluates.

Per seed: a random (target, source) class pair (``draws.backdoor``, as the ``patch`` and
``hidden_trigger`` attacks draw it) and the trigger: by default the benchmark's
(``craft_poisons_clbd.py`` pastes ``triggers/clbd.png`` resized to p x p; ``trigger: benchmark``),
or the seed's random Bernoulli trigger (``trigger: random``). ``n_poisons`` random
target-class training images are made hard to learn by an untargeted PGD attack on the crafting
model (maximise the cross-entropy of their true label; random start in the eps-ball, signed
gradient steps, projection onto the ball and [0, 1] after each step), then the trigger is stamped
on each (pasted, overwriting its p x p pixels) where ``location`` puts it (the benchmark's
bottom-right corner by default), recorded in ``info``. Labels stay correct. So a poison differs from
its clean image by at most eps outside its trigger window, and equals the trigger inside it. Scoring
is the trigger backdoors' (``hidden_trigger``): one patched source-class target per seed.

PGD runs on the crafting model's logits over the victim's classes: the benchmark uses an
adversarially trained CIFAR-10 ResNet-18 (``pretrained_models/ResNet18_CIFAR10_adv.pth``). Here it is
the transfer recipe's extractor when that was pretrained on the victim's data (offline fallback), or
a model trained on the victim's training set with ``crafting_recipe`` when the extractor was
pretrained elsewhere (CIFAR-100) - standard, not adversarial, training.

The benchmark's ``craft_poisons_clbd.py`` clamps the stamped image back into the eps-ball, which
largely erases the trigger on the poisons (``trigger_on_poisons: clamped``, the default: the code
behind the papers' numbers); Turner et al. keep the full trigger (``stamped``). The PGD images are
stored truncated to uint8, as the benchmark's ``ToPILImage`` saves them (``quantize``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from augdefense.attacks import register
from augdefense.attacks.constraints import craft_frozen, project, quantize
from augdefense.attacks.hidden_trigger import TriggerBackdoor
from augdefense.attacks.patch import paste
from augdefense.params import OPTIONAL, Param

log = logging.getLogger("augdefense.attacks")


def pgd_perturb(
    logits_fn,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    step_size: float = 2 / 255,
    random_start: bool = True,
    seed: int = 0,
) -> dict:
    """Untargeted l-inf PGD for float ``images`` in [0, 1] (``eps`` and ``step_size`` in [0, 1]
    units): maximise the summed cross-entropy of ``labels``. ``logits_fn`` maps images in [0, 1]
    to logits (the caller freezes the model: see ``frozen``). The random start is drawn on the CPU
    from ``seed``, so it does not depend on the device.

    Returns ``poisons`` (the perturbed images, inside the ball) and ``history`` (the mean loss of
    the start and after every step)."""
    images, labels = images.detach(), labels.to(images.device)
    x = images.clone()
    if random_start:
        generator = torch.Generator().manual_seed(seed)
        noise = (torch.rand(images.shape, generator=generator) * 2 - 1) * eps
        x = project(images + noise.to(images.device), images, eps)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_fn(x), labels, reduction="sum")

    history = []
    for _ in range(steps):
        x.requires_grad_(True)
        loss = loss_of(x)
        (grad,) = torch.autograd.grad(loss, x)
        history.append(float(loss.detach()) / len(images))
        x = project(x.detach() + step_size * grad.sign(), images, eps)
    with torch.no_grad():
        history.append(float(loss_of(x)) / len(images))
    return {"poisons": x.detach(), "history": history}


@register
class CleanLabelBackdoor(TriggerBackdoor):
    type_name = "clean_label_backdoor"
    description = "the clean-label backdoor"
    corner_margin = 0  # craft_poisons_clbd.py: start_x = image_size - patch_size
    trigger_file = "clbd.png"  # craft_poisons_clbd.py: Image.open("./poison_crafting/triggers/clbd.png")
    # Defaults of the benchmark's craft_poisons_clbd.py (poison_crafting/README.md): PGD with a random
    # start, 20 steps of 2/255, eps 8/255 (Turner et al. use the same PGD, eps 8-32/255).
    params = {
        **TriggerBackdoor.params,
        "steps": Param("integer", "PGD steps (20 in the benchmark)", default=20, minimum=1),
        "step_size": Param(
            "number", "PGD step in 1/255 pixel units (2 in the benchmark)", default=2, exclusive_minimum=0
        ),
        "trigger_on_poisons": Param(
            "string",
            "clamped: the stamped poison is clamped back into the eps-ball (the benchmark's code); "
            "stamped: the full trigger stays (Turner et al.)",
            default="clamped",
            enum=("clamped", "stamped"),
        ),
        "crafting_recipe": Param(
            "string",
            "PGD's model: one trained on the victim's data with this recipe (needed when the transfer "
            "recipe's extractor pretrains on another dataset); absent: the extractor itself",
            default=OPTIONAL,
        ),
    }

    def __init__(self, spec, name=""):
        super().__init__(spec, name)
        self.steps = self.spec["steps"]
        self.step_size = float(self.spec["step_size"])
        self.trigger_on_poisons = self.spec["trigger_on_poisons"]

    def poison(self, dataset, seed, context, draw, indices, place):
        # The poisons' trigger locations: [seed, 1], after the poisons.
        rows, cols = self.locations(place, dataset, self.n_poisons)
        clean = dataset.train_images[indices]
        labels = dataset.train_labels[indices].to(context.device)
        adversarial, result = craft_frozen(
            context,
            clean,
            self.eps,
            lambda bases: pgd_perturb(
                context.logits,
                bases,
                labels,
                self.eps / 255,
                steps=self.steps,
                step_size=self.step_size / 255,
                seed=seed,
            ),
            self.quantization,
        )
        log.info(
            "clean-label backdoor: loss of the true label %.4f -> %.4f", result["history"][0], result["history"][-1]
        )
        poisons = paste(adversarial, draw["patch"], rows, cols)
        if self.trigger_on_poisons == "clamped":  # craft_poisons_clbd.py: clamp(stamped - base, -eps, eps)
            poisons = quantize(clean, poisons.float() / 255, self.eps)  # integer levels: exact in either mode
        return poisons, {
            "patch_rows": rows.tolist(),
            "patch_cols": cols.tolist(),
            "adversarial_loss_first": result["history"][0],
            "adversarial_loss": result["history"][-1],
        }
