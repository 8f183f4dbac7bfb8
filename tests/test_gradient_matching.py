"""Witches' Brew gradient matching: the poison's constraints, the optimisation, restarts, controls."""

import math

import pytest
import torch

from augdefense import attacks, defenses, poisons
from augdefense.attacks.base import CraftingContext
from augdefense.attacks.constraints import quantize_delta as quantize
from augdefense.attacks.gradient_matching import brew
from augdefense.errors import ConfigError
from augdefense.metrics import goal_margin, paired_shift
from augdefense.models import build as build_model
from augdefense.training import Normalizer, Recipe

SPEC = {"type": "gradient_matching", "recipe": "targeted", "eps": 8, "budget": 0.02, "iterations": 6, "restarts": 2}


def context(dataset, defense=None, seed=0, recipe=None):
    torch.manual_seed(seed)
    model = build_model({"arch": "convnet", "width": 8}, 1, dataset.num_classes, dataset.image_shape[-1]).eval()
    return CraftingContext(
        model,
        Normalizer(dataset.mean, dataset.std),
        torch.device("cpu"),
        defense,
        recipe or Recipe.from_spec({"epochs": 1, "milestones": [], "crop_pad": 1, "flip": False}),
    )


@pytest.fixture(scope="module")
def trained_context(digits8):
    """A crafting model trained for a few epochs (a random network's gradients are already aligned)."""
    from augdefense.training import train

    ctx = context(digits8)
    recipe = Recipe.from_spec({"epochs": 3, "milestones": [], "crop_pad": 1, "flip": False})
    train(
        ctx.model,
        digits8.train_images,
        digits8.train_labels,
        defenses.build({"type": "none"}, 10),
        recipe,
        ctx.normalizer,
        ctx.device,
        seed=0,
        amp=False,
    )
    ctx.model.eval()
    return ctx


def craft(dataset, seed=0, defense=None, **overrides):
    attack = attacks.build({**SPEC, **overrides}, "wb")
    return attack.craft(dataset, seed, None if attack.spec.get("control") else context(dataset, defense))


def test_poisons_stay_in_the_eps_ball_touch_only_their_indices_and_keep_labels(digits8):
    poison = craft(digits8)
    idx = poison["train_indices"]
    assert len(idx) == round(0.02 * len(digits8.train_labels))
    clean = digits8.train_images[idx].int()
    change = (poison["train_images"].int() - clean).abs()
    assert change.max() <= 8 and change.max() > 0
    assert torch.equal(poison["train_labels"], digits8.train_labels[idx])
    # Clean-label: every poison belongs to the intended class.
    assert (poison["train_labels"] == poison["info"]["intended_class"]).all()
    images, labels = poisons.apply(digits8.train_images, digits8.train_labels, poison)
    changed = torch.nonzero((images != digits8.train_images).flatten(1).any(1)).flatten()
    assert set(changed.tolist()) <= set(idx.tolist())
    assert torch.equal(labels, digits8.train_labels)


def test_target_is_a_test_image_of_another_class_left_out_of_clean_accuracy(digits8):
    info = craft(digits8, iterations=1, restarts=1)
    poison = info
    target = poison["info"]["target_index"]
    assert poison["clean_exclude"].tolist() == [target]
    assert torch.equal(poison["eval_images"][0], digits8.test_images[target])
    assert poison["eval_labels"].item() == digits8.test_labels[target].item() == poison["info"]["target_class"]
    assert poison["eval_goals"].item() == poison["info"]["intended_class"] != poison["info"]["target_class"]


def test_matching_loss_falls_and_the_lowest_loss_restart_is_kept(digits8, trained_context):
    ctx = trained_context
    idx = torch.nonzero(digits8.train_labels == 3).flatten()[:20]
    target = torch.nonzero(digits8.test_labels == 5).flatten()[:1]
    result = brew(
        ctx,
        digits8.train_images[idx].float() / 255,
        digits8.train_labels[idx],
        digits8.test_images[target].float() / 255,
        3,
        eps=16 / 255,
        iterations=40,
        restarts=3,
        seed=1,
    )
    assert result["history"][-1] < 0.85 * result["history"][0]
    losses = result["restart_losses"]
    assert len(losses) == 3 and len(set(losses)) == 3
    assert result["restart"] == min(range(3), key=losses.__getitem__)
    assert result["history"][-1] == min(losses)
    assert result["delta"].abs().max() <= 16 / 255 + 1e-6


def test_same_seed_same_poison_other_seed_other_draw(digits8):
    a, b = craft(digits8, seed=3), craft(digits8, seed=3)
    assert torch.equal(a["train_images"], b["train_images"]) and torch.equal(a["train_indices"], b["train_indices"])
    c = craft(digits8, seed=4)
    assert not torch.equal(a["train_indices"], c["train_indices"])


def test_control_draws_the_same_target_and_poisons_nothing(digits8):
    poisoned, control = craft(digits8, seed=2), craft(digits8, seed=2, control=True)
    assert len(control["train_indices"]) == 0 and len(control["train_images"]) == 0
    for key in ("target_class", "intended_class", "target_index"):
        assert control["info"][key] == poisoned["info"][key]
    assert torch.equal(control["eval_images"], poisoned["eval_images"])
    assert not attacks.build({**SPEC, "control": True}, "c").needs_model


def test_adaptive_crafting_goes_through_the_defense(digits8):
    plain = craft(digits8, seed=1)
    mixed = craft(digits8, seed=1, defense=defenses.build({"type": "mixup", "k": 2}, 10, seed=1), adaptive=True)
    assert torch.equal(plain["train_indices"], mixed["train_indices"])
    assert not torch.equal(plain["train_images"], mixed["train_images"])
    assert mixed["info"]["adaptive"] is True


def test_adaptive_poisons_match_better_through_the_defense_than_plain_ones(digits8, trained_context):
    """Both crafts start from the same seeded point and move away from it; measured through the
    defense (4-way mixup, the same mixing draws for both), the adaptive poison's matching loss is
    the lower one: it optimised exactly that."""
    from augdefense.attacks.gradient_matching import initial_delta, matching_loss, target_gradient

    ctx = trained_context
    idx = torch.nonzero(digits8.train_labels == 3).flatten()[:24]
    images, labels = digits8.train_images[idx].float() / 255, digits8.train_labels[idx]
    target_image = digits8.test_images[torch.nonzero(digits8.test_labels == 5).flatten()[:1]].float() / 255
    spec, eps = {"type": "mixup", "k": 4}, 16 / 255

    def crafted(defense):
        context = CraftingContext(ctx.model, ctx.normalizer, ctx.device, defense, ctx.recipe)
        return brew(context, images, labels, target_image, 3, eps=eps, iterations=30, restarts=1, seed=7)["delta"]

    plain, adaptive = crafted(None), crafted(defenses.build(spec, 10, seed=0))
    start = initial_delta(images, eps, torch.Generator().manual_seed(7))
    for delta in (plain, adaptive):
        assert (delta - start).abs().mean() > eps / 4  # moved from the seeded start
        assert delta.abs().max() <= eps + 1e-6

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    target = target_gradient(ctx, params, target_image, 3)

    def through_defense(delta) -> float:
        losses = []
        for draw in range(8):  # the same mixing draws for both poisons
            torch.manual_seed(draw)
            context = CraftingContext(ctx.model, ctx.normalizer, ctx.device, defenses.build(spec, 10, seed=draw))
            losses.append(matching_loss(context, params, images + delta, labels, target).detach().item())
        return sum(losses) / len(losses)

    assert through_defense(adaptive) < through_defense(plain)


@pytest.mark.parametrize("dp_gradients, calls", [(None, 0), ("plain", 0), ("clip_noise", 1)])
def test_adaptive_crafting_against_dpsgd_matches_the_plain_gradient_by_default(digits8, dp_gradients, calls):
    """forest's WitchGradientMatchingNoisy._hide_gradient clips out of place and its noise branch
    raises NameError: the papers' adaptive DP-SGD cells are plain gradient matching on the model
    trained under DP-SGD. Our clip + noise inside crafting is the option dp_gradients: clip_noise."""
    defense = defenses.build({"type": "dpsgd_batch", "clip": 1.0, "noise": 0.01}, 10, seed=0)
    seen = []
    hook = defense.crafting_gradients
    defense.crafting_gradients = lambda grads: seen.append(1) or hook(grads)
    overrides = {"adaptive": True, "iterations": 1, "restarts": 1}
    if dp_gradients is not None:
        overrides["dp_gradients"] = dp_gradients
    craft(digits8, seed=1, defense=defense, **overrides)
    assert bool(seen) == bool(calls)


def test_dpsgd_crafting_gradients_clip_and_noise_like_training():
    grads = (torch.full((10,), 3.0, requires_grad=True), torch.full((5,), 4.0))
    clipped = defenses.build({"type": "dpsgd_batch", "clip": 1.0, "noise": 0.0}, 10).crafting_gradients(grads)
    assert math.isclose(float(torch.sqrt(sum(g.detach().pow(2).sum() for g in clipped))), 1.0, rel_tol=1e-4)
    clipped[0].sum().backward()  # differentiable: the clip's scale reaches the poison
    assert grads[0].grad is not None
    torch.manual_seed(0)
    noisy = defenses.build({"type": "dpsgd_batch", "clip": 1.0, "noise": 0.5}, 10).crafting_gradients(
        (torch.zeros(20000),)
    )
    assert abs(float(noisy[0].std()) - 0.5) < 0.02
    untouched = defenses.build({"type": "mixup"}, 10).crafting_gradients(grads)
    assert untouched is grads


def test_quantize_stays_inside_a_fractional_ball_and_the_pixel_range():
    clean = torch.tensor([0, 10, 128, 250, 255], dtype=torch.uint8)
    delta = torch.tensor([-0.2, 0.05, -0.04, 0.1, 0.3])
    out = quantize(clean, delta, 7.5).int()
    assert ((out - clean.int()).abs() <= 7).all() and out.min() >= 0 and out.max() <= 255
    assert out.tolist() == [0, 17, 121, 255, 255]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eps": 0}, r"^attacks\.wb\.eps: 0 is invalid; must be a number > 0 and <= 255$"),
        ({"budget": 1.5}, r"^attacks\.wb\.budget: 1\.5 is invalid; must be a number > 0 and <= 1$"),
        ({"restarts": 0}, r"^attacks\.wb\.restarts: 0 is invalid; must be an integer >= 1$"),
        ({"sigma": 1}, r"^attacks\.wb: unknown key\(s\) \['sigma'\] for type 'gradient_matching'"),
    ],
)
def test_bad_parameters_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        attacks.build({**SPEC, **overrides}, "wb")


def test_a_budget_larger_than_the_intended_class_is_refused(digits8):
    with pytest.raises(
        ConfigError, match=r"^attacks\.wb\.budget: 718 poisons, but goal class \d has only 1[34]\d training"
    ):
        craft(digits8, budget=0.5)


def test_goal_margin_is_positive_exactly_when_the_goal_wins_and_shift_pairs_seeds():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    goals = torch.tensor([0, 0, 2])
    margin = goal_margin(probs, goals)
    assert margin[0] > 0 and margin[1] < 0 and margin[2] > 0
    assert math.isclose(float(margin[1]), math.log(0.2 / 0.5), rel_tol=1e-6)
    mean, low, high, n = paired_shift([1.0, 2.0, 3.0], [0.0, 0.5, 1.0])
    assert n == 3 and math.isclose(mean, 1.5) and low < mean < high
    assert paired_shift([1.0], [0.0])[1] != paired_shift([1.0], [0.0])[1]  # one pair: no interval (NaN)


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "cutmix", "alpha": 1.0, "p": 1.0},
        {"type": "cutout", "size": 4},
        {"type": "maxup", "m": 2, "start_epoch": 0, "inner": {"type": "cutout", "size": 4}},
        {"type": "mixup", "k": 4, "weights": "equal", "laplace": 8},
        {"type": "dpsgd_batch", "clip": 1.0, "noise": 0.01},
    ],
)
@pytest.mark.parametrize("dp_gradients", ["plain", "clip_noise"])
def test_every_augmentation_and_dp_defense_can_be_crafted_through(digits8, spec, dp_gradients):
    """The adaptive crafting loop differentiates through each defense's loss and gradient hooks."""
    ctx = context(digits8, defenses.build(spec, 10, seed=0))
    idx = torch.nonzero(digits8.train_labels == 3).flatten()[:8]
    result = brew(
        ctx,
        digits8.train_images[idx].float() / 255,
        digits8.train_labels[idx],
        digits8.test_images[:1].float() / 255,
        3,
        eps=8 / 255,
        iterations=2,
        restarts=1,
        dp_gradients=dp_gradients,
    )
    assert result["delta"].abs().max() > 0 and math.isfinite(result["history"][-1])


def test_the_step_is_tau_in_normalised_units(digits8, trained_context):
    """Geiping et al.'s signAdam "Rule 2": Adam's first step on a sign gradient moves every coordinate
    by lr = tau x (batch / 512) in normalised units, i.e. tau x the channel's std in pixels (0.1 x
    0.376 on digits, about 0.038, where the old step was 0.1 x eps). Three iterations put the decays
    at 1, 1 and 2, so the later steps add at most 1.1% of the first."""
    from augdefense.attacks.gradient_matching import initial_delta

    ctx, eps = trained_context, 128 / 255
    idx = torch.nonzero(digits8.train_labels == 3).flatten()[:16]
    images = torch.full((16, 1, 8, 8), 0.5)  # mid-grey: no pixel-range clipping
    start = initial_delta(images, eps, torch.Generator().manual_seed(4))
    inside = start.abs() < eps - 0.1  # away from the ball's edge, where the projection would clip
    std = float(digits8.std)
    for batch, tau in ((512, 0.1), (256, 0.05)):
        result = brew(
            ctx,
            images,
            digits8.train_labels[idx],
            digits8.test_images[:1].float() / 255,
            3,
            eps=eps,
            iterations=3,
            restarts=1,
            seed=4,
            batch_size=batch,
        )
        moved = (result["delta"] - start).abs()[inside]
        assert moved.max() <= tau * std * 1.012 and moved.median() >= tau * std * 0.988


def test_restarts_start_from_a_clipped_gaussian():
    from augdefense.attacks.gradient_matching import initial_delta

    images = torch.zeros(20000, 1, 2, 2)
    start = initial_delta(images, 0.1, torch.Generator().manual_seed(0))
    at_edge = (start.abs() >= 0.1 - 1e-7).float().mean()
    assert start.abs().max() <= 0.1 and abs(float(at_edge) - 0.3173) < 0.01  # P(|z| > 1) for z ~ N(0, 1)
    uniform = initial_delta(images, 0.1, torch.Generator().manual_seed(0), init="uniform")
    assert (uniform.abs() >= 0.1 - 1e-7).float().mean() < 0.01 and abs(float(uniform.abs().mean()) - 0.05) < 0.002


def test_the_crafting_shift_pads_with_zeros_like_the_victims_crop():
    """A 4 px shift of an all-white image leaves a black border (zero padding, as the victim's
    random crop pads), not the white that reflection padding would copy in."""
    from augdefense.attacks.gradient_matching import differentiable_shift_flip

    generator = torch.Generator().manual_seed(0)
    shifted = differentiable_shift_flip(torch.ones(64, 1, 16, 16), 4, False, generator)
    assert shifted.min() == 0.0  # some border pixel of some image is padding
    assert ((shifted > 0) & (shifted < 1)).any()  # sub-pixel shifts blend the border (bilinear)
    assert shifted.max() <= 1.0
