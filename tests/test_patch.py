"""The backdoor patch changes only the chosen images, inside the valid range, reproducibly."""

import io

import pytest
import torch

from augdefense import attacks, poisons

SPEC = {"type": "patch", "recipe": "backdoor", "patch_size": 2, "fraction": 0.1}


def craft(dataset, seed=0, **overrides):
    return attacks.build({**SPEC, **overrides}, "patch").craft(dataset, seed)


def test_only_chosen_images_change(digits8):
    poison = craft(digits8, fraction=0.5)
    images, labels = poisons.apply(digits8.train_images, digits8.train_labels, poison)
    changed = torch.nonzero((images != digits8.train_images).flatten(1).any(1)).flatten()
    assert set(changed.tolist()) <= set(poison["train_indices"].tolist())
    assert torch.equal(labels, digits8.train_labels)  # clean-label: labels unchanged
    target = poison["info"]["target_class"]
    assert (digits8.train_labels[poison["train_indices"]] == target).all()
    n_target = int((digits8.train_labels == target).sum())
    assert poison["info"]["n_poisons"] == len(poison["train_indices"]) == round(0.5 * n_target)
    patch = poison["patch"]
    assert set(patch.unique().tolist()) <= {0, 255}
    for i in poison["train_indices"].tolist():
        diff = (images[i] != digits8.train_images[i]).any(0)
        if diff.any():
            rows, cols = torch.nonzero(diff, as_tuple=True)
            assert rows.max() - rows.min() < 2 and cols.max() - cols.min() < 2
        # the patch is somewhere in the image, intact
        windows = images[i].unfold(1, 2, 1).unfold(2, 2, 1)  # [C, H-1, W-1, 2, 2]
        assert (windows == patch[:, None, None]).flatten(3).all(3).all(0).any()
    assert images.dtype == torch.uint8


def test_eval_set_is_patched_victim_images(digits8):
    poison = craft(digits8)
    info = poison["info"]
    n_victim = int((digits8.test_labels == info["victim_class"]).sum())
    assert len(poison["eval_images"]) == n_victim
    assert (poison["eval_labels"] == info["victim_class"]).all()
    assert (poison["eval_goals"] == info["target_class"]).all()
    assert info["target_class"] != info["victim_class"]
    victims = digits8.test_images[digits8.test_labels == info["victim_class"]]
    assert (poison["eval_images"] != victims).flatten(1).any(1).float().mean() > 0.5


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_same_seed_same_poison_bytes(digits8):
    assert _bytes(craft(digits8, seed=3)) == _bytes(craft(digits8, seed=3))
    assert _bytes(craft(digits8, seed=3)) != _bytes(craft(digits8, seed=4))


def test_fractions_of_one_seed_share_pair_and_trigger(digits8):
    small, full = craft(digits8, seed=5, fraction=0.1), craft(digits8, seed=5, fraction=1.0)
    assert small["info"]["target_class"] == full["info"]["target_class"]
    assert torch.equal(small["patch"], full["patch"])
    assert full["info"]["n_poisons"] == int((digits8.train_labels == full["info"]["target_class"]).sum())


def test_control_poisons_nothing_but_keeps_the_draw(digits8):
    poison, control = craft(digits8, seed=2), craft(digits8, seed=2, control=True)
    assert len(control["train_indices"]) == 0
    assert torch.equal(control["eval_images"], poison["eval_images"])
    assert control["info"]["target_class"] == poison["info"]["target_class"]
    images, _ = poisons.apply(digits8.train_images, digits8.train_labels, control)
    assert torch.equal(images, digits8.train_images)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_refused(fraction):
    from augdefense.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^attacks\.patch\.fraction: .+ is invalid; must be a number > 0 and <= 1$"):
        attacks.build({**SPEC, "fraction": fraction}, "patch")


def test_patch_larger_than_image_is_refused(digits8):
    from augdefense.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^attacks\.patch\.patch_size: 9 exceeds the 8x8 images$"):
        craft(digits8, patch_size=9)


def _digest(poison) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key in ("train_indices", "train_images", "eval_images", "eval_goals", "patch"):
        digest.update(poison[key].numpy().tobytes())
    return digest.hexdigest()[:12]


def test_a_seed_draws_the_same_patch_poison_bytes(digits8):
    """The draws (pair, trigger, poisoned images and their placements, test placements) of seed 0,
    pinned: a change in how the attack consumes its random streams fails here. Update deliberately."""
    poison = attacks.build({**SPEC, "patch_size": 3, "fraction": 0.5}, "patch").craft(digits8, 0)
    assert _digest(poison) == "b366c2a887c6"
    assert poison["clean_exclude"].tolist() == []  # every clean test image counts towards accuracy
    assert poison["info"] == {
        "target_class": poison["info"]["target_class"],
        "victim_class": poison["info"]["victim_class"],
        "n_poisons": 72,
        "attack": "patch",
        "type": "patch",
        "seed": 0,
    }
    assert poison["eval_labels"].dtype == poison["eval_goals"].dtype == torch.long
