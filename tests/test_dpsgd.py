"""Batch-level DP-SGD (as the papers ran it): clip the mini-batch gradient, then add Gaussian noise."""

import pytest
import torch

from augdefense import defenses


def _model_with_grads(scale: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 10))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def _norm(model) -> float:
    return torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())).item()


@pytest.mark.parametrize("scale", [0.001, 10.0])
def test_clip_bounds_the_gradient_norm(scale):
    model = _model_with_grads(scale)
    before = _norm(model)
    defenses.build({"type": "dpsgd_batch", "clip": 1.0, "noise": 0.0}, 10).process_gradients(model)
    after = _norm(model)
    assert after <= 1.0 + 1e-5
    assert after == pytest.approx(min(before, 1.0), rel=1e-4)  # small gradients are left alone


def test_noise_has_the_configured_std():
    model = _model_with_grads(0.0)  # zero gradients: what remains is the noise
    torch.manual_seed(1)
    defenses.build({"type": "dpsgd_batch", "clip": 2.0, "noise": 0.01}, 10).process_gradients(model)
    noise = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert noise.numel() > 2000
    assert noise.std().item() == pytest.approx(2.0 * 0.01, rel=0.05)
    assert abs(noise.mean().item()) < 3 * 0.02 / noise.numel() ** 0.5


def test_training_calls_the_hook(digits8):
    from augdefense import models
    from augdefense.training import Normalizer, Recipe, train

    calls = []
    defense = defenses.build({"type": "dpsgd_batch", "noise": 0.0}, 10)
    original = defense.process_gradients
    defense.process_gradients = lambda model: (calls.append(_norm(model)), original(model))
    model = models.build({"arch": "convnet", "width": 4}, 1, 10, 8)
    recipe = Recipe.from_spec({"epochs": 1, "milestones": [], "batch_size": 256, "crop_pad": 0, "flip": False})
    train(
        model,
        digits8.train_images,
        digits8.train_labels,
        defense,
        recipe,
        Normalizer(digits8.mean, digits8.std),
        torch.device("cpu"),
        seed=0,
        amp=False,
    )
    assert len(calls) == 6  # ceil(1437 / 256) steps


def _opacus_run(tmp_path, digits8, noise_multiplier, norm="group"):
    from augdefense.jobs.craft import craft_poison
    from augdefense.jobs.train import TrainingJob, train_victim

    root = tmp_path
    if not (root / "data.pt").exists():
        from augdefense import data

        data.prepare(spec={"source": "digits"}, out=root / "data.pt")
        craft_poison(
            data=root / "data.pt",
            attack_name="p",
            attack={"type": "patch", "recipe": "r", "patch_size": 2, "fraction": 0.1},
            seed=0,
            out=root / "poison.pt",
        )
    job = TrainingJob(
        data=root / "data.pt",
        poison=root / "poison.pt",
        defense_name="dp",
        defense={"type": "dpsgd_opacus", "clip": 1.0, "noise_multiplier": noise_multiplier, "delta": 1e-5},
        recipe={"epochs": 1, "milestones": [], "batch_size": 128, "crop_pad": 0, "flip": False},
        model={"arch": "convnet", "width": 8, "norm": norm, "groups": 4},
        runtime={"device": "cpu", "amp": False},
        seed=0,
    )
    return train_victim(job, attack="p", out=root / f"run_{noise_multiplier}.json")


def test_opacus_reports_an_epsilon_that_falls_as_noise_rises(tmp_path, digits8):
    low, high = _opacus_run(tmp_path, digits8, 0.8), _opacus_run(tmp_path, digits8, 2.0)
    for record in (low, high):
        assert 0 < record["dp_epsilon"] < float("inf") and record["dp_delta"] == 1e-5
        assert 0 <= record["clean_acc"] <= 1
    assert high["dp_epsilon"] < low["dp_epsilon"]


def test_opacus_refuses_batchnorm_before_training(tmp_path, digits8):
    from augdefense.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"^defenses\.dp: per-sample DP-SGD cannot train a model with BatchNorm .*"
        r"set model\.norm: group$",
    ):
        _opacus_run(tmp_path, digits8, 1.0, norm="batch")


def test_laplace_runs_record_theorem2_epsilon():
    from augdefense import privacy

    dpih = defenses.build({"type": "mixup", "k": 4, "weights": "equal", "laplace": 8}, 10)
    record = dpih.privacy_record(1000, (1, 8, 8), epochs=2, batch_size=100)
    sigma = privacy.sigma_from_noise(8, (1, 8, 8))
    assert record["theorem2_epsilon"] == pytest.approx(privacy.mixup_laplace_epsilon(4, sigma, 1000, 2000))
    noise_only = defenses.build({"type": "none", "laplace": 8}, 10).privacy_record(1000, (1, 8, 8), 2, 100)
    assert noise_only["theorem2_epsilon"] > record["theorem2_epsilon"]  # k = 1
    dirichlet = defenses.build({"type": "mixup", "k": 4, "laplace": 8}, 10).privacy_record(1000, (1, 8, 8), 2, 100)
    assert dirichlet == {"theorem2_epsilon": None}  # the theorem covers equal weights only
    assert defenses.build({"type": "mixup", "k": 4}, 10).privacy_record(1000, (1, 8, 8), 2, 100) == {}


# Every defense type with Laplacian noise on: the Theorem 2 releases it makes, or None where the
# theorem (equal-weight k-way mixup, or plain noise) does not cover its augmentation.
N, EPOCHS, SHAPE = 1000, 6, (1, 8, 8)
THEOREM2_CASES = {
    "none": ({"type": "none"}, [(1, N * EPOCHS)]),
    "mixup equal": ({"type": "mixup", "k": 4, "weights": "equal"}, [(4, N * EPOCHS)]),
    "mixup k=1": ({"type": "mixup", "k": 1}, [(1, N * EPOCHS)]),
    "mixup dirichlet": ({"type": "mixup", "k": 4}, None),
    "cutmix": ({"type": "cutmix"}, None),
    "cutout": ({"type": "cutout", "size": 4}, None),
    "maxup over cutout": ({"type": "maxup", "m": 3, "start_epoch": 2}, None),
    # m noised draws of every image per epoch after the start, plain noise before: 2 + 4 x 3 releases.
    "maxup over none": (
        {"type": "maxup", "m": 3, "start_epoch": 2, "inner": {"type": "none"}},
        [(1, N * 2), (1, N * 4 * 3)],
    ),
    "maxup over equal mixup": (
        {"type": "maxup", "m": 3, "start_epoch": 2, "inner": {"type": "mixup", "k": 2, "weights": "equal"}},
        [(1, N * 2), (2, N * 4 * 3)],
    ),
    "maxup over a noised inner": ({"type": "maxup", "inner": {"type": "none", "laplace": 4}}, None),
    "dpsgd_batch": ({"type": "dpsgd_batch"}, [(1, N * EPOCHS)]),
    "dpsgd_opacus": ({"type": "dpsgd_opacus"}, [(1, N * EPOCHS)]),
    "spectral_signatures": ({"type": "spectral_signatures"}, [(1, N * EPOCHS)]),
    "activation_clustering": ({"type": "activation_clustering"}, [(1, N * EPOCHS)]),
    "deep_knn": ({"type": "deep_knn"}, [(1, N * EPOCHS)]),
}


def test_the_cases_cover_every_registered_defense_type():
    assert {spec["type"] for spec, _ in THEOREM2_CASES.values()} == set(defenses.REGISTRY)


@pytest.mark.parametrize("case", sorted(THEOREM2_CASES))
def test_theorem2_epsilon_for_every_defense_type(case):
    from augdefense import privacy

    spec, releases = THEOREM2_CASES[case]
    record = defenses.build({**spec, "laplace": 8}, 10).privacy_record(N, SHAPE, EPOCHS, 100)
    if releases is None:
        assert record["theorem2_epsilon"] is None
        return
    sigma = privacy.sigma_from_noise(8, SHAPE)
    expected = sum(privacy.mixup_laplace_epsilon(k, sigma, N, t) for k, t in releases)
    assert record["theorem2_epsilon"] == pytest.approx(expected, rel=1e-12)
