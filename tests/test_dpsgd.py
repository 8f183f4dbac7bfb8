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
    return torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())).item()


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
    from augdefense.training import Normalizer, Recipe, train
    from augdefense import models

    calls = []
    defense = defenses.build({"type": "dpsgd_batch", "noise": 0.0}, 10)
    original = defense.process_gradients
    defense.process_gradients = lambda model: (calls.append(_norm(model)), original(model))
    model = models.build({"arch": "convnet", "width": 4}, 1, 10, 8)
    recipe = Recipe.from_spec({"epochs": 1, "milestones": [], "batch_size": 256, "crop_pad": 0, "flip": False})
    train(model, digits8.train_images, digits8.train_labels, defense, recipe,
          Normalizer(digits8.mean, digits8.std), torch.device("cpu"), seed=0, amp=False)
    assert len(calls) == 6  # ceil(1437 / 256) steps
