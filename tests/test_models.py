"""Model initialisation: the ResNets start as forest's (forest/victims/models.py, ResNet.__init__)."""

import math

import pytest
import torch
from torch import nn

from augdefense.errors import ConfigError
from augdefense.models import build


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 1000]


def _kurtosis(w: torch.Tensor) -> float:
    w = w.flatten().double()
    z = (w - w.mean()) / w.std()
    return float(z.pow(4).mean())


def test_resnet18_cifar_convolutions_start_as_forests_kaiming_normal_fan_out():
    torch.manual_seed(0)
    model = build({"arch": "resnet18_cifar"}, 3, 10, 32)
    for conv in _convs(model):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = float(conv.weight.detach().std())
        assert std == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)  # PyTorch's default: ~2.5x smaller
        assert _kurtosis(conv.weight.detach()) > 2.6  # normal (3), not uniform (1.8)
    for norm in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    fan_in = model.linear.in_features  # the linear layer keeps PyTorch's default, as in forest
    assert float(model.linear.weight.abs().max()) <= 1 / math.sqrt(fan_in)


def test_groupnorm_resnet_starts_as_forests_too():
    model = build({"arch": "resnet18_cifar", "norm": "group"}, 3, 10, 32)
    for norm in [m for m in model.modules() if isinstance(m, nn.GroupNorm)]:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()


@pytest.mark.parametrize("spec", [{"arch": "resnet18_cifar", "init": "pytorch"}, {"arch": "convnet"}])
def test_pytorch_init_is_the_option_and_the_convnets_default(spec):
    torch.manual_seed(0)
    model = build(spec, 3, 10, 32)
    for conv in _convs(model):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert float(conv.weight.detach().std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)
        assert _kurtosis(conv.weight.detach()) < 2.2


def test_forest_init_on_the_convnet_and_pytorch_init_on_torchvisions_resnet():
    torch.manual_seed(0)
    convnet = build({"arch": "convnet", "init": "forest"}, 3, 10, 32)
    conv = _convs(convnet)[-1]
    fan_out = conv.out_channels * 9
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    imagenet = build({"arch": "resnet18_imagenet", "init": "pytorch"}, 3, 10, 64)
    conv = _convs(imagenet)[-1]
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)


def test_an_unknown_init_is_refused():
    with pytest.raises(ConfigError, match=r"^model\.init: "):
        build({"arch": "convnet", "init": "xavier"}, 3, 10, 32)
