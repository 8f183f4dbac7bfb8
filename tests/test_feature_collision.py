"""Feature collision, convex polytope, hidden-trigger and clean-label backdoor attacks: poisons
stay in their eps-balls with their labels, the optimisations make progress, the convex
coefficients stay on the simplex, triggers are hidden (HTBD) or stamped (CLBD), and a seed fixes
the poison. A tiny random 2-conv net on 8x8 digits keeps every test fast."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from augdefense import attacks, poisons
from augdefense.attacks import triggers
from augdefense.attacks.base import CraftingContext
from augdefense.attacks.clean_label import pgd_perturb
from augdefense.attacks.constraints import frozen, quantize
from augdefense.attacks.convex_polytope import convex_polytope, simplex_least_squares, simplex_projection
from augdefense.attacks.feature_collision import feature_collision
from augdefense.attacks.hidden_trigger import greedy_assignment, hidden_trigger
from augdefense.attacks.patch import paste
from augdefense.errors import ConfigError


class TinyNet(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.linear = nn.Linear(8 * width, classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.linear(self.features(x))


class Normalize(nn.Module):
    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


@pytest.fixture()
def context(digits8):
    return CraftingContext(tiny_model(), Normalize(digits8.mean, digits8.std), torch.device("cpu"))


# Small but moving settings (the defaults are the benchmark's full-size ones).
FAST = {
    "feature_collision": {"iterations": 30, "step_size": 1.0, "beta": 0.1, "n_poisons": 6},
    "convex_polytope": {"iterations": 8, "lr": 0.1, "n_poisons": 6},
    "hidden_trigger": {"iterations": 15, "lr": 0.05, "n_poisons": 6, "patch_size": 3},
    "clean_label_backdoor": {"steps": 5, "n_poisons": 6, "patch_size": 3},
}
KINDS = list(FAST)


def craft(kind, dataset, context, seed=0, **overrides):
    spec = {"type": kind, "recipe": "r", **FAST[kind], **overrides}
    return attacks.build(spec, kind).craft(dataset, seed, context)


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _outside_window(images, rows, cols, p):
    """Mask [N, 1, H, W] that is False inside each image's p x p trigger window."""
    mask = torch.ones(images.shape[0], 1, *images.shape[2:], dtype=torch.bool)
    for i, (r, c) in enumerate(zip(rows, cols)):
        mask[i, :, r : r + p, c : c + p] = False
    return mask


# ----------------------------------------------------------------------------- shared properties


@pytest.mark.parametrize("kind", KINDS)
def test_poisons_stay_in_their_ball_and_keep_labels(kind, digits8, context):
    eps = 8
    poison = craft(kind, digits8, context, eps=eps)
    idx = poison["train_indices"]
    assert poison["train_images"].dtype == torch.uint8 and poison["eval_images"].dtype == torch.uint8
    assert poison["train_images"].shape == (len(idx), *digits8.image_shape)
    images, labels = poisons.apply(digits8.train_images, digits8.train_labels, poison)
    assert torch.equal(labels, digits8.train_labels)  # clean-label: no label changes
    changed = torch.nonzero((images != digits8.train_images).flatten(1).any(1)).flatten()
    assert set(changed.tolist()) <= set(idx.tolist())
    assert len(changed) > 0  # the attack did perturb something (else the ball check is vacuous)
    diff = (images[idx].int() - digits8.train_images[idx].int()).abs()
    if kind == "clean_label_backdoor":  # the stamped trigger is the one place allowed to exceed eps
        info = poison["info"]
        diff = diff * _outside_window(diff, info["patch_rows"], info["patch_cols"], info["patch_size"])
    assert diff.max() <= eps
    assert diff.max() >= eps - 1  # the optimisation reached the boundary somewhere
    assert poison["info"]["n_poisons"] == len(idx) == FAST[kind]["n_poisons"]
    assert poison["info"]["type"] == kind and poison["info"]["seed"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_artifact_passes_the_loader(kind, digits8, context, tmp_path):
    poison = craft(kind, digits8, context)
    path = tmp_path / "poison.pt"
    torch.save(poison, path)
    loaded = poisons.load(path, digits8.image_shape, len(digits8.train_labels), digits8.num_classes)
    assert torch.equal(loaded["train_images"], poison["train_images"])


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_poison(kind, digits8, context):
    first = craft(kind, digits8, context, seed=3)
    again = craft(kind, digits8, CraftingContext(tiny_model(), context.normalizer, context.device), seed=3)
    assert _bytes(first) == _bytes(again)
    other = craft(kind, digits8, context, seed=4)
    assert _bytes(first) != _bytes(other)


@pytest.mark.parametrize("kind", KINDS)
def test_crafting_freezes_the_model_and_restores_it(kind, digits8, context):
    model = context.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    craft(kind, digits8, context)
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients accumulated
    for k, v in model.state_dict().items():  # eval mode while crafting: BatchNorm stats untouched
        assert torch.equal(v, before[k]), k


def test_frozen_sets_eval_and_no_grad_inside():
    model = tiny_model()
    model.train()
    model.linear.weight.requires_grad_(False)
    with frozen(model):
        assert not model.training and not model.body[1].training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training and model.body[1].training
    assert not model.linear.weight.requires_grad and model.linear.bias.requires_grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key,value", [("eps", 0), ("eps", 300), ("n_poisons", 0), ("n_poisons", 2.5)])
def test_invalid_common_keys_are_refused(kind, key, value):
    with pytest.raises(ConfigError, match=rf"^attacks\.{kind}\.{key}: .+ is invalid; must be "):
        attacks.build({"type": kind, "recipe": "r", key: value}, kind)


@pytest.mark.parametrize(
    "kind,key,value",
    [
        ("feature_collision", "beta", -1),
        ("feature_collision", "watermark", 1.0),
        ("feature_collision", "step_size", 0),
        ("feature_collision", "iterations", 0),
        ("feature_collision", "update", "l2"),
        ("convex_polytope", "lr", 0),
        ("convex_polytope", "iterations", True),
        ("hidden_trigger", "patch_size", 0),
        ("hidden_trigger", "lr", -0.1),
        ("clean_label_backdoor", "steps", 0),
        ("clean_label_backdoor", "step_size", 0),
    ],
)
def test_invalid_specific_keys_are_refused(kind, key, value):
    with pytest.raises(ConfigError, match=rf"^attacks\.{kind}\.{key}: .+ is invalid; must be "):
        attacks.build({"type": kind, "recipe": "r", key: value}, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_poisons_is_refused(kind, digits8, context):
    with pytest.raises(ConfigError, match=rf"^attacks\.{kind}\.n_poisons: 500 poisons, but \w+ class \d has only"):
        craft(kind, digits8, context, n_poisons=500)


def test_quantize_keeps_the_ball_after_rounding():
    clean = torch.tensor([[0, 10, 250, 128]], dtype=torch.uint8).view(1, 1, 1, 4)
    poisons = torch.tensor([[-0.5, 200.0, 300.0, 135.6]]).view(1, 1, 1, 4) / 255
    assert quantize(clean, poisons, 8).flatten().tolist() == [0, 18, 255, 136]
    assert quantize(clean, poisons, 8.9).flatten().tolist() == [0, 18, 255, 136]  # floor(eps) levels


def test_truncation_is_what_the_benchmarks_topilimage_saves_and_keeps_the_ball():
    from torchvision import transforms

    clean = torch.tensor([[0, 10, 250, 128, 100]], dtype=torch.uint8).view(1, 1, 1, 5)
    poisons = torch.tensor([[-0.5, 200.0, 300.0, 135.6, 92.9]]).view(1, 1, 1, 5) / 255
    assert quantize(clean, poisons, 8, "truncate").flatten().tolist() == [0, 18, 255, 135, 92]
    assert quantize(clean, poisons, 8, "round").flatten().tolist() == [0, 18, 255, 136, 93]
    x = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    saved = torch.from_numpy(np.asarray(transforms.ToPILImage()(x)).copy()).permute(2, 0, 1)
    assert torch.equal(quantize(x.mul(255).round().byte()[None], x[None], 8, "truncate")[0], saved)


@pytest.mark.parametrize("kind", KINDS)
def test_transfer_poisons_are_truncated_by_default_and_rounded_as_an_option(kind, digits8, context):
    truncated = craft(kind, digits8, context, seed=0)
    rounded = craft(kind, digits8, context, seed=0, quantize="round")
    assert truncated["info"]["quantize"] == "truncate" and rounded["info"]["quantize"] == "round"
    up = rounded["train_images"].int() - truncated["train_images"].int()
    assert set(up.unique().tolist()) == {0, 1}  # the same float poisons, stored one level apart at most


# ----------------------------------------------------------------------------- targeted (FC, CP)


@pytest.mark.parametrize("kind", ["feature_collision", "convex_polytope"])
def test_targeted_draw(kind, digits8, context):
    poison = craft(kind, digits8, context, seed=5)
    info = poison["info"]
    assert info["target_class"] != info["attacker_class"]
    assert digits8.test_labels[info["target_index"]] == info["target_class"]
    assert torch.equal(poison["eval_images"], digits8.test_images[info["target_index"]][None])
    assert poison["eval_labels"].tolist() == [info["target_class"]]
    assert poison["eval_goals"].tolist() == [info["attacker_class"]]
    assert poison["clean_exclude"].tolist() == [info["target_index"]]
    assert (digits8.train_labels[poison["train_indices"]] == info["attacker_class"]).all()
    # FC and CP of one seed attack the same target with the same attacker class
    other = craft("convex_polytope" if kind == "feature_collision" else "feature_collision", digits8, context, seed=5)
    assert other["info"]["target_index"] == info["target_index"]
    assert other["info"]["attacker_class"] == info["attacker_class"]


def _images(dataset, cls, n, split="train"):
    images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
    return images[labels == cls][:n].float() / 255


@pytest.mark.parametrize("update,step", [("linf", 0.3), ("proximal", 10.0)])
def test_feature_collision_distance_falls(update, step, digits8, context):
    model = context.model
    target, bases = _images(digits8, 3, 1, "test")[0], _images(digits8, 7, 5)
    eps = 32 / 255
    with frozen(model):
        result = feature_collision(
            context.features, target, bases, eps, update=update, beta=0.1, step_size=step, iterations=40, watermark=0.0
        )
        history = result["history"]
        assert history[-1] < 0.7 * history[0]
        assert all(b <= a + 1e-6 for a, b in zip(result["objective"], result["objective"][1:]))  # backtracking
        poisons = result["poisons"]
        assert (poisons - bases).abs().max() <= eps + 1e-6 and poisons.min() >= 0 and poisons.max() <= 1
        # the returned distance is the poisons' actual distance
        dist = (context.features(poisons) - context.features(target[None])).pow(2).sum(1).mean()
        assert abs(float(dist) - history[-1]) < 1e-4 * max(1.0, history[-1])


def test_feature_collision_beta_pulls_towards_the_base(digits8, context):
    target, bases = _images(digits8, 3, 1, "test")[0], _images(digits8, 7, 4)
    with frozen(context.model):
        kwargs = {"update": "proximal", "step_size": 0.05, "iterations": 30}
        loose = feature_collision(context.features, target, bases, 1.0, beta=0.0, **kwargs)
        tight = feature_collision(context.features, target, bases, 1.0, beta=50.0, **kwargs)
    assert (tight["poisons"] - bases).norm() < (loose["poisons"] - bases).norm()


def _identity_features(x):
    return x.flatten(1)


def test_linf_first_step_is_a_clamped_gradient_step_from_the_unprojected_watermark():
    """craft_poisons_fc.py (no --l2): the first gradient is taken at 0.3 t + 0.7 b before any
    projection, the step is x - lr * grad (no beta term), then the clamp to the ball and [0, 1]."""
    torch.manual_seed(0)
    target, bases = torch.rand(1, 1, 4, 4), torch.rand(3, 1, 4, 4)
    eps, lr = 0.05, 0.01
    start = 0.3 * target + 0.7 * bases  # outside the 0.05-ball for most pixels
    expected = torch.clamp(start - lr * 2 * (start - target), bases - eps, bases + eps).clamp(0, 1)
    out = feature_collision(_identity_features, target, bases, eps, step_size=lr, iterations=1, beta=100.0)
    torch.testing.assert_close(out["poisons"], expected)
    proximal = feature_collision(
        _identity_features, target, bases, eps, update="proximal", step_size=lr, iterations=1, beta=100.0
    )
    assert not torch.allclose(proximal["poisons"], expected)


def test_linf_accept_test_is_lagged_and_freezes_the_poison():
    """An overshooting step raises the loss; the benchmark notices only on the next iteration (its
    objective is the loss at the current x), rejects from then on and keeps the worse point, while
    the step shrinks x0.2 per rejection. The proximal line search never takes the bad step."""
    target, bases = torch.full((1, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), 0.4)
    eps, lr = 1.0, 1.5  # identity features: x <- x - 3 (x - t) overshoots t by 2x the distance
    out = feature_collision(_identity_features, target, bases, eps, step_size=lr, iterations=4, watermark=0.0)
    overshoot = (0.4 - lr * 2 * (0.4 - 0.5)) * torch.ones_like(bases)  # 0.7: farther from t than 0.4
    torch.testing.assert_close(out["poisons"], overshoot)
    assert out["step_sizes"] == pytest.approx([lr * 0.2**3] * 2)
    assert out["history"][-1] > out["history"][0]  # it kept the worse point
    line_search = feature_collision(
        _identity_features, target, bases, eps, update="proximal", beta=0.0, step_size=lr, iterations=4, watermark=0.0
    )
    assert line_search["history"][-1] < line_search["history"][0]


def test_unknown_update_is_refused():
    with pytest.raises(ValueError, match="update"):
        feature_collision(_identity_features, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0.1, update="l2")


def test_simplex_projection_known_inputs():
    cases = [
        ([0.5, 0.5], [0.5, 0.5]),
        ([2.0, 0.0], [1.0, 0.0]),
        ([0.3, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3]),
        ([-1.0, 2.0, 0.5], [0.0, 1.0, 0.0]),
        ([0.6, 0.5, -0.2], [0.55, 0.45, 0.0]),
        ([0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]),
    ]
    for v, expected in cases:
        assert torch.allclose(simplex_projection(torch.tensor(v)), torch.tensor(expected), atol=1e-6), v
    batch = simplex_projection(torch.tensor([[2.0, 0.0], [0.5, 0.5]]))
    assert torch.allclose(batch, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_simplex_projection_is_the_nearest_simplex_point():
    gen = torch.Generator().manual_seed(0)
    dirichlet = torch.distributions.Dirichlet(torch.ones(6))
    torch.manual_seed(0)
    for _ in range(20):
        v = torch.randn(6, generator=gen) * 2
        w = simplex_projection(v)
        assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-6
        others = dirichlet.sample((2000,))
        assert (others - v).norm(dim=1).min() >= (w - v).norm() - 1e-6


def test_simplex_least_squares_finds_the_known_combination():
    a = torch.eye(4)[:3] * 2.0  # 3 poisons, 4 features
    b = a.T @ torch.tensor([0.2, 0.5, 0.3])
    c = simplex_least_squares(a, b, torch.full((3,), 1 / 3))
    assert torch.allclose(c, torch.tensor([0.2, 0.5, 0.3]), atol=1e-4)


def test_convex_polytope_coefficients_stay_on_the_simplex(digits8, context):
    other = tiny_model(seed=1)
    target, bases = _images(digits8, 3, 1, "test")[0], _images(digits8, 7, 5)
    eps = 8 / 255
    extractors = [context.features, lambda x: other.features(context.normalizer(x))]
    with frozen(context.model, other):
        result = convex_polytope(extractors, target, bases, eps, iterations=12, lr=0.1, scale=digits8.std)
    coeffs = result["coefficient_history"]
    assert coeffs.shape == (12, 2, 5)
    assert (coeffs >= 0).all()
    assert torch.allclose(coeffs.sum(-1), torch.ones(12, 2), atol=1e-5)
    assert (coeffs[-1] < 0.999).any()  # not stuck on a vertex: a non-trivial polytope
    assert result["history"][-1] < result["history"][0]
    poisons = result["poisons"]
    assert (poisons - bases).abs().max() <= eps + 1e-6 and poisons.min() >= 0 and poisons.max() <= 1
    assert (poisons - bases).abs().max() > eps / 2  # the poisons moved


# ----------------------------------------------------------------------------- backdoors (HTBD, CLBD)


def test_greedy_assignment_is_one_to_one_closest_first():
    dist = torch.tensor([[1.0, 0.5, 9.0], [0.1, 0.4, 9.0], [2.0, 3.0, 8.0]])
    # closest pair (1, 0) first, then (0, 1), then (2, 2) although 2 is nearest to 0
    assert greedy_assignment(dist).tolist() == [1, 0, 2]
    with pytest.raises(ValueError):
        greedy_assignment(torch.zeros(3, 2))


def test_hidden_trigger_loss_falls_and_poisons_stay_close(digits8, context):
    images = _images(digits8, 2, 5)
    sources = _images(digits8, 6, 5).clone()
    sources[:, :, 5:8, 5:8] = 1.0  # a pasted white trigger
    eps = 8 / 255
    with frozen(context.model):
        result = hidden_trigger(context.features, images, sources, eps, lr=0.05, iterations=30)
    assert result["final_loss"] < result["history"][0]
    assert sorted(result["pairs"].tolist()) == list(range(5))
    assert (result["poisons"] - images).abs().max() <= eps + 1e-6


def _contains(image, patch, r, c):
    p = patch.shape[-1]
    return torch.equal(image[:, r : r + p, c : c + p], patch)


def _windows_with(image, patch):
    p = patch.shape[-1]
    windows = image.unfold(1, p, 1).unfold(2, p, 1)  # [C, H-p+1, W-p+1, p, p]
    return (windows == patch[:, None, None]).flatten(3).all(3).all(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hidden_trigger_never_shows_the_trigger_in_training(seed, digits8, context):
    poison = craft("hidden_trigger", digits8, context, seed=seed)
    idx, patch = poison["train_indices"], poison["patch"]
    clean, poisons = digits8.train_images[idx], poison["train_images"]
    assert (poisons.int() - clean.int()).abs().max() <= 8  # pasting a 0/255 trigger would break this
    for i in range(len(idx)):  # no window newly shows the trigger
        assert not (_windows_with(poisons[i], patch) & ~_windows_with(clean[i], patch)).any()
    info = poison["info"]
    assert (digits8.train_labels[idx] == info["target_class"]).all()
    assert info["target_class"] != info["source_class"]


@pytest.mark.parametrize("kind", ["hidden_trigger", "clean_label_backdoor"])
def test_scored_target_is_one_patched_source_image_and_all_images_are_kept(kind, digits8, context):
    """The benchmark's poison_test.py: one source-class test image with the trigger where crafting
    put it; every patched source-class test image stays as the all-images rate."""
    poison = craft(kind, digits8, context, seed=1)
    info, patch = poison["info"], poison["patch"]
    assert patch.shape == (1, 3, 3)
    (target,) = poison["eval_images"]
    assert digits8.test_labels[info["target_index"]] == info["source_class"]
    expected = paste(
        digits8.test_images[[info["target_index"]]],
        patch,
        np.array([info["target_patch_row"]]),
        np.array([info["target_patch_col"]]),
    )
    assert torch.equal(target, expected[0])
    assert poison["eval_labels"].tolist() == [info["source_class"]]
    assert poison["eval_goals"].tolist() == [info["target_class"]]
    assert len(poison["clean_exclude"]) == 0
    sources = digits8.test_images[digits8.test_labels == info["source_class"]]
    assert len(poison["all_eval_images"]) == len(sources)
    assert (poison["all_eval_goals"] == info["target_class"]).all()
    for image in poison["all_eval_images"]:
        assert _windows_with(image, patch).any()
    # same pair as the plain patch attack of the seed
    plain = attacks.build({"type": "patch", "recipe": "r", "patch_size": 3}, "p").craft(digits8, 1)
    assert plain["info"]["target_class"] == info["target_class"]
    assert plain["info"]["victim_class"] == info["source_class"]


TRIGGER_FILES = {"hidden_trigger": "htbd.png", "clean_label_backdoor": "clbd.png"}


@pytest.mark.parametrize("kind", ["hidden_trigger", "clean_label_backdoor"])
def test_the_trigger_is_the_benchmarks_image_by_default_and_the_seeds_random_one_as_an_option(kind, digits8, context):
    """craft_poisons_htbd.py pastes triggers/htbd.png, craft_poisons_clbd.py triggers/clbd.png, each
    resized to the patch size; trigger: random keeps the patch attack's Bernoulli trigger."""
    poison = craft(kind, digits8, context, seed=1)
    expected = triggers.load(TRIGGER_FILES[kind], 3, 1)
    assert torch.equal(poison["patch"], expected) and poison["info"]["trigger"] == "benchmark"
    assert len(expected.unique()) > 2  # not a 0/255 draw
    random = craft(kind, digits8, context, seed=1, trigger="random")
    plain = attacks.build({"type": "patch", "recipe": "r", "patch_size": 3}, "p").craft(digits8, 1)
    assert torch.equal(random["patch"], plain["patch"]) and set(random["patch"].unique().tolist()) <= {0, 255}
    assert random["info"]["source_class"] == poison["info"]["source_class"]


class _Shape:
    image_shape = (3, 32, 32)


@pytest.mark.parametrize("kind, corner", [("hidden_trigger", 22), ("clean_label_backdoor", 27)])
def test_fixed_trigger_location_is_the_benchmarks(kind, corner):
    """craft_poisons_htbd.py: image_size - patch_size - 5; craft_poisons_clbd.py: image_size - patch_size."""
    attack = attacks.build({"type": kind, "recipe": "r", "patch_size": 5}, kind)
    rows, cols = attack.locations(np.random.default_rng(0), _Shape(), 4)
    assert rows.tolist() == cols.tolist() == [corner] * 4
    scattered = attacks.build({"type": kind, "recipe": "r", "patch_size": 5, "location": "random"}, kind)
    rows, _ = scattered.locations(np.random.default_rng(0), _Shape(), 50)
    assert len(set(rows.tolist())) > 5 and rows.max() <= 27


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_label_backdoor_stamps_the_trigger_on_every_poison(seed, digits8, context):
    poison = craft("clean_label_backdoor", digits8, context, seed=seed, trigger_on_poisons="stamped")
    info, patch = poison["info"], poison["patch"]
    p = info["patch_size"]
    rows, cols = info["patch_rows"], info["patch_cols"]
    assert len(rows) == len(cols) == len(poison["train_indices"])
    for image, r, c in zip(poison["train_images"], rows, cols):
        assert _contains(image, patch, r, c)
    assert (digits8.train_labels[poison["train_indices"]] == info["target_class"]).all()
    assert all(0 <= r <= 8 - p and 0 <= c <= 8 - p for r, c in zip(rows, cols))


def test_clean_label_backdoor_clamps_the_trigger_into_the_ball_by_default(digits8, context):
    """craft_poisons_clbd.py: final_pert = clamp(stamped - base, -eps, eps)."""
    poison = craft("clean_label_backdoor", digits8, context, seed=0, eps=8)
    clean = digits8.train_images[poison["train_indices"]]
    assert (poison["train_images"].int() - clean.int()).abs().max() <= 8
    stamped = craft("clean_label_backdoor", digits8, context, seed=0, eps=8, trigger_on_poisons="stamped")
    assert (stamped["train_images"].int() - clean.int()).abs().max() > 8


def test_pgd_raises_the_loss_of_the_true_label(digits8, context):
    images = _images(digits8, 4, 8)
    labels = torch.full((8,), 4)
    eps = 8 / 255
    with frozen(context.model):
        clean_loss = nn.functional.cross_entropy(context.logits(images), labels)
        result = pgd_perturb(context.logits, images, labels, eps, steps=10, step_size=2 / 255)
        adv_loss = nn.functional.cross_entropy(context.logits(result["poisons"]), labels)
    assert adv_loss > clean_loss
    assert result["history"][-1] > result["history"][0]
    assert (result["poisons"] - images).abs().max() <= eps + 1e-6
