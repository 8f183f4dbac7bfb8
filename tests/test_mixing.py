"""Mixing defenses: labels are mixed exactly as the images are."""

import numpy as np
import pytest
import torch

from augdefense import defenses
from augdefense.defenses.base import soft_cross_entropy
from augdefense.errors import ConfigError

C = 5


def label_images(y: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Image i has channel y[i] set to 1 everywhere: its pixels spell out its label, so any mix of
    images spells out the matching mix of labels."""
    return torch.nn.functional.one_hot(y, C).float()[:, :, None, None].expand(-1, -1, size, size).clone()


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("weights", ["dirichlet", "equal"])
def test_mixup_labels_mix_as_images(k, weights):
    torch.manual_seed(0)
    mixup = defenses.build({"type": "mixup", "k": k, "alpha": 1.0, "weights": weights}, C, seed=1)
    y = torch.randint(0, C, (64,))
    for _ in range(5):
        x, soft = mixup.transform(label_images(y), y, epoch=0)
        assert torch.allclose(x[:, :, 3, 5], soft, atol=1e-6)
        assert torch.allclose(x[:, :, 0, 0], x[:, :, 7, 7])  # the same weights at every pixel
        assert torch.allclose(soft.sum(1), torch.ones(64), atol=1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_mixup_weights(k):
    mixup = defenses.build({"type": "mixup", "k": k, "alpha": 1.0}, C, seed=0)
    draws = torch.stack([mixup.draw_weights() for _ in range(500)])
    assert torch.allclose(draws.sum(1), torch.ones(500, dtype=draws.dtype))
    assert (draws >= 0).all()
    assert torch.allclose(draws.mean(0), torch.full((k,), 1 / k, dtype=draws.dtype), atol=0.05)
    equal = defenses.build({"type": "mixup", "k": k, "weights": "equal"}, C)
    assert torch.equal(equal.draw_weights(), torch.full((k,), 1 / k, dtype=torch.float64))


def test_cutmix_labels_follow_pasted_area():
    torch.manual_seed(0)
    cutmix = defenses.build({"type": "cutmix", "alpha": 1.0, "p": 1.0}, C, seed=0)
    y = torch.arange(32) % C
    mixed = 0
    for _ in range(20):
        x, soft = cutmix.transform(label_images(y, 16), y, epoch=0)
        # Each pixel carries its source image's label: the area-average is the true label mix.
        assert torch.allclose(x.mean((2, 3)), soft, atol=1e-5)
        mixed += int((soft.max(1).values < 1).any())
    assert mixed >= 15  # almost every batch gets a box


def test_cutmix_probability():
    y = torch.arange(32) % C
    never = defenses.build({"type": "cutmix", "p": 0.0}, C, seed=0)
    for _ in range(10):
        x, soft = never.transform(label_images(y), y, epoch=0)
        assert torch.equal(soft, torch.nn.functional.one_hot(y, C).float())
    sometimes = defenses.build({"type": "cutmix", "p": 0.5}, C, seed=0)
    applied = sum(
        int(not torch.equal(sometimes.transform(label_images(y), y, 0)[1], torch.nn.functional.one_hot(y, C).float()))
        for _ in range(200)
    )
    assert 70 <= applied <= 130


def test_cutout_blacks_out_one_clipped_square():
    torch.manual_seed(0)
    cutout = defenses.build({"type": "cutout", "size": 4}, C)
    y = torch.zeros(200, dtype=torch.long)
    x, soft = cutout.transform(torch.ones(200, 3, 12, 12), y, epoch=0)
    assert torch.equal(soft, torch.nn.functional.one_hot(y, C).float())
    zero = x[:, 0] == 0
    assert torch.equal(zero, (x == 0).all(1))  # all channels together
    rows, cols = zero.any(2), zero.any(1)
    area = zero.sum((1, 2))
    assert (area == rows.sum(1) * cols.sum(1)).all()  # a rectangle
    assert (rows.sum(1) <= 4).all() and (cols.sum(1) <= 4).all()
    assert (area == 16).float().mean() > 0.4 and (area < 16).any()  # clipped at the border sometimes


def test_forest_cutout_cuts_one_box_for_the_batch_in_the_mean_colour():
    """forest's Cutout.forward: one box for the whole batch, filled with 0 after normalisation,
    i.e. the dataset's mean colour."""
    torch.manual_seed(0)
    mean = torch.tensor([0.25, 0.5, 0.75])
    cutout = defenses.build({"type": "cutout", "size": 4, "boxes": "per_batch", "fill": "mean"}, C, data_mean=mean)
    x, _ = cutout.transform(torch.ones(50, 3, 12, 12), torch.zeros(50, dtype=torch.long), epoch=0)
    cut = (x != 1).any(1)  # [B, H, W]
    assert cut.any() and (cut == cut[0]).all()  # the same box in every image
    assert torch.equal(x.permute(0, 2, 3, 1)[cut], mean.expand(int(cut.sum()), 3))


def _forest_bbox(centre: int, side: int, strength: float) -> tuple[int, int]:
    """forest's Cutout._rand_bbox along one side (mixing_data_augmentations.py), for a given centre."""
    cut = int(side * np.sqrt(1.0 - strength * 0.66))
    return int(np.clip(centre - cut // 2, 0, side)), int(np.clip(centre + cut // 2, 0, side))


@pytest.mark.parametrize("strength, smallest, largest", [(0, 16, 32), (1, 9, 18), (0.5, 13, 26)])
def test_cutout_at_a_strength_cuts_forests_box(strength, smallest, largest):
    """forest's default mixing_strength 0 cuts centre +/- 16 clipped (16 to 32 px on CIFAR-10);
    strength 1 cuts 18 px."""
    torch.manual_seed(0)
    cutout = defenses.build({"type": "cutout", "strength": strength}, C)
    x, _ = cutout.transform(torch.ones(3000, 1, 32, 32), torch.zeros(3000, dtype=torch.long), epoch=0)
    zero = x[:, 0] == 0
    possible = {_forest_bbox(c, 32, strength) for c in range(32)}
    seen = set()
    for image in zero:
        rows, cols = torch.nonzero(image.any(1)).flatten(), torch.nonzero(image.any(0)).flatten()
        box_rows, box_cols = (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)
        assert box_rows in possible and box_cols in possible
        assert int(image.sum()) == (box_rows[1] - box_rows[0]) * (box_cols[1] - box_cols[0])
        seen.add(box_rows)
    assert seen == possible
    extents = {b - a for a, b in possible}
    assert min(extents) == smallest and max(extents) == largest


def test_cutout_takes_a_size_or_a_strength_not_both():
    with pytest.raises(ConfigError, match=r"defenses\.d: give size or strength"):
        defenses.build({"type": "cutout", "size": 16, "strength": 0}, C, name="d")
    with pytest.raises(ConfigError, match=r"defenses\.d\.strength"):
        defenses.build({"type": "cutout", "strength": 2}, C, name="d")


def test_mean_fill_without_a_dataset_mean_is_refused():
    with pytest.raises(ConfigError, match=r"defenses\.d\.fill: 'mean' needs the dataset's mean colour"):
        defenses.build({"type": "cutout", "fill": "mean"}, C, name="d")
    with pytest.raises(ConfigError, match=r"defenses\.d\.inner\.fill"):
        defenses.build({"type": "maxup", "inner": {"type": "cutout", "fill": "mean"}}, C, name="d")


def test_forest_maxup_trains_on_one_batch_carrying_all_m_boxes_with_the_mean_loss():
    """forest's Maxup over its in-place Cutout: the m trials cut into the same tensor, so the
    batch carries m boxes; the m identical copies and a plain mean loss equal one copy's mean loss."""
    spec = {"type": "maxup", "m": 3, "start_epoch": 0, "mode": "forest", "inner": {"type": "cutout", "size": 3}}
    maxup = defenses.build(spec, C, data_mean=torch.zeros(3))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, C))
    x, y = torch.rand(8, 3, 12, 12) + 0.1, torch.randint(0, C, (8,))
    seen = []
    torch.manual_seed(1)
    loss = maxup.loss(lambda batch: seen.append(batch) or model(batch), x, y, epoch=0)
    torch.manual_seed(1)  # replay: three boxes into the same images
    expected = x
    for _ in range(3):
        expected, _ = maxup.inner.mix(expected, y, 0)
    (batch,) = seen
    assert batch.shape == x.shape and torch.equal(batch, expected)
    boxes = [(expected == 0).all(1)[i].sum() for i in range(8)]
    assert max(boxes) > 9  # more than one 3x3 box landed
    assert torch.allclose(loss, soft_cross_entropy(model(expected), torch.nn.functional.one_hot(y, C).float()))
    worst = defenses.build({**spec, "mode": "worst"}, C)
    assert not torch.allclose(worst.loss(model, x, y, epoch=0), loss)


def test_forest_maxup_needs_cutout_inside():
    with pytest.raises(ConfigError, match=r"defenses\.d\.mode: 'forest' .* inner must be cutout"):
        defenses.build({"type": "maxup", "mode": "forest", "inner": {"type": "mixup"}}, C, name="d")


def test_maxup_trains_on_the_worst_draw():
    torch.manual_seed(0)
    maxup = defenses.build({"type": "maxup", "m": 3, "start_epoch": 2, "inner": {"type": "cutout", "size": 2}}, C)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, C))
    x, y = torch.rand(6, 3, 4, 4), torch.randint(0, C, (6,))
    draws = [(x * s, torch.nn.functional.one_hot(y, C).float()) for s in (0.5, 2.0, -1.0)]
    maxup.inner.transform = lambda xx, yy, e, it=iter(draws): next(it)
    loss = maxup.loss(model, x, y, epoch=2)
    per_draw = torch.stack([soft_cross_entropy(model(d), t, reduction="none") for d, t in draws])
    expected = per_draw.max(0).values.mean()
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, per_draw.mean())
    # The gradient is that of the per-sample worst draw.
    g = torch.autograd.grad(loss, model[1].weight)[0]
    g_expected = torch.autograd.grad(expected, model[1].weight)[0]
    assert torch.allclose(g, g_expected)


def test_maxup_late_start_is_plain_training():
    maxup = defenses.build({"type": "maxup", "m": 4, "start_epoch": 5}, C)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, C))
    x, y = torch.rand(6, 3, 4, 4), torch.randint(0, C, (6,))
    plain = soft_cross_entropy(model(x), torch.nn.functional.one_hot(y, C).float())
    assert torch.allclose(maxup.loss(model, x, y, epoch=4), plain)


def test_laplace_noise_composes_with_mixup():
    y = torch.randint(0, C, (256,))
    images = torch.rand(256, 3, 16, 16)
    clean = defenses.build({"type": "mixup", "k": 4, "weights": "equal"}, C)
    noisy = defenses.build({"type": "mixup", "k": 4, "weights": "equal", "laplace": 8}, C)
    torch.manual_seed(3)
    x_clean, y_clean = clean.transform(images, y, 0)
    torch.manual_seed(3)
    x_noisy, y_noisy = noisy.transform(images, y, 0)
    assert torch.equal(y_clean, y_noisy)
    noise = x_noisy - x_clean
    assert abs(noise.abs().mean().item() - 8 / 255) < 0.03 * 8 / 255  # E|Laplace(b)| = b
    assert abs(noise.mean().item()) < 0.01 * 8 / 255 + 1e-4


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "mixup", "k": 0}, r"^defenses\.d\.k: 0 is invalid; must be an integer >= 1$"),
        ({"type": "mixup", "alpha": -1.0}, r"^defenses\.d\.alpha: -1\.0 is invalid; must be a number > 0$"),
        ({"type": "mixup", "k": 2.5}, r"^defenses\.d\.k: 2\.5 is invalid"),
        ({"type": "cutmix", "p": 1.5}, r"^defenses\.d\.p: 1\.5 is invalid; must be a number >= 0 and <= 1$"),
        ({"type": "cutmix", "beta": 1.0}, r"^defenses\.d: unknown key\(s\) \['beta'\] for type 'cutmix'"),
        ({"type": "none", "laplace": -2}, r"^defenses\.d\.laplace: -2 is invalid"),
        ({"type": "maxup", "inner": {"type": "cutout", "size": 0}}, r"^defenses\.d\.inner\.size: 0 is invalid"),
        ({"type": "mixupp"}, r"^defenses\.d\.type: 'mixupp' is not one of \["),
    ],
)
def test_bad_defense_entries_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        defenses.build(spec, C, name="d")


def test_laplace_clip_keeps_noised_images_in_range_and_is_off_by_default():
    x = torch.full((64, 1, 8, 8), 0.99)
    y = torch.zeros(64, dtype=torch.long)
    torch.manual_seed(0)
    raw, _ = defenses.build({"type": "none", "laplace": 16}, 10).transform(x, y, 0)
    clipped, _ = defenses.build({"type": "none", "laplace": 16, "laplace_clip": True}, 10).transform(x, y, 0)
    assert raw.max() > 1 and raw.min() < 0.99
    assert clipped.max() <= 1 and clipped.min() >= 0 and clipped.min() < 0.99


def test_cutout_squares_are_centred_uniformly_and_clipped():
    """Every (first row, height) a 4x4 square centred on each row of an 8x8 image can give appears,
    and no other: half the side above the centre, the rest below, clipped at the border."""
    torch.manual_seed(0)
    cutout = defenses.build({"type": "cutout", "size": 4}, C)
    x = torch.ones(3000, 1, 8, 8)
    masked = cutout.transform(x, torch.zeros(3000, dtype=torch.long), 0)[0][:, 0] == 0
    rows = masked.any(2)
    seen = {(int(r.nonzero()[0]), int(r.sum())) for r in rows}
    expected = {(max(0, cy - 2), min(8, cy + 2) - max(0, cy - 2)) for cy in range(8)}
    assert seen == expected
    cols = masked.any(1)
    assert {(int(c.nonzero()[0]), int(c.sum())) for c in cols} == expected


def test_maxup_draws_its_inner_augmentation_of_the_batch_and_its_labels():
    torch.manual_seed(0)
    maxup = defenses.build({"type": "maxup", "m": 3, "start_epoch": 0, "inner": {"type": "cutout", "size": 2}}, C)
    x, y = torch.rand(5, 3, 4, 4) + 0.5, torch.randint(0, C, (5,))
    seen = []

    def model(batch):
        seen.append(batch)
        return torch.zeros(len(batch), C)

    maxup.loss(model, x, y, epoch=1)
    (batch,) = seen
    assert batch.shape == (15, 3, 4, 4)
    for draw in batch.view(3, 5, 3, 4, 4):
        kept = draw != 0
        assert torch.equal(draw[kept], x[kept])  # each draw is the batch, some pixels cut out
        assert (~kept).any(dim=(1, 2, 3)).all()


def test_cutmix_alpha_shapes_the_area_distribution():
    """Beta(0.1, 0.1) puts far more boxes near empty or full than Beta(1, 1) (about 47% against 18%
    of the label weights outside [0.1, 0.9] here; clipping at the border keeps both below Beta's own)."""
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 1])
    shares = {}
    for alpha in (0.1, 1.0):
        torch.manual_seed(0)
        cutmix = defenses.build({"type": "cutmix", "alpha": alpha, "p": 1.0}, C)
        weights = torch.stack([cutmix.transform(x, y, 0)[1][0, 0] for _ in range(400)])
        shares[alpha] = float(((weights < 0.1) | (weights > 0.9)).float().mean())
    assert shares[0.1] > 2 * shares[1.0] > 0


# The bytes each augmentation draws for one seed: a change in how a defense consumes its random
# streams (and so in every result downstream) fails here. Update deliberately, with the reason.
GOLDEN = {
    "mixup dirichlet": ({"type": "mixup", "k": 3}, "42e64eb5"),
    "mixup equal": ({"type": "mixup", "k": 4, "weights": "equal"}, "dd316f88"),
    "mixup equal k=3": ({"type": "mixup", "k": 3, "weights": "equal"}, "404e97f1"),
    "cutmix": ({"type": "cutmix"}, "4b14f590"),
    "cutout": ({"type": "cutout", "size": 3}, "15823fe9"),
    "maxup": ({"type": "maxup", "m": 2, "start_epoch": 0, "inner": {"type": "cutmix"}}, "89ffb647"),
    "laplace": ({"type": "none", "laplace": 8}, "93424d09"),
}


def _draw_digest(spec) -> str:
    import hashlib

    torch.manual_seed(1)
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % C
    defense = defenses.build(spec, C, seed=5)
    if spec["type"] == "maxup":
        parts = [defense.transform_draw(x, y, 1) for _ in range(2)]
    else:
        parts = [defense.transform(x, y, 0) for _ in range(3)]
    digest = hashlib.sha256()
    for images, labels in parts:
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()[:8]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_seed_draws_the_same_augmentation_bytes(name):
    spec, digest = GOLDEN[name]
    assert _draw_digest(spec) == digest
