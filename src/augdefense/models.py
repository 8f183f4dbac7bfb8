"""Models: CIFAR-style ResNet-18 (3x3 stem, no max-pool), torchvision's ImageNet ResNet-18, and a
small ConvNet for the CPU presets. BatchNorm by default; GroupNorm as an option (for per-sample DP-SGD).

Initialisation (``init``): the ResNets start as forest's do (JonasGeiping/data-poisoning,
``forest/victims/models.py``, ``ResNet.__init__``): every convolution ``kaiming_normal_(mode="fan_out",
nonlinearity="relu")``, every BatchNorm/GroupNorm weight 1 and bias 0, the final linear layer
PyTorch's default, no zero-initialised residual branch. torchvision's ImageNet ResNet already
initialises so. ``init: pytorch`` keeps PyTorch's layer defaults (a convolution's
``kaiming_uniform_(a=sqrt(5))``, about 2.5x smaller weights in a 3x3x64 convolution), the
ConvNet's default. The benchmark's ResNet-18 (aks2203/poisoning-benchmark, ``models/resnet.py``),
which pretrained the transfer setting's extractor, kept PyTorch's defaults; one ``model`` entry
serves every recipe here, so the extractor starts as forest's ResNets do.
"""

from __future__ import annotations

import torch
from torch import nn

from augdefense.errors import ArtifactError, ConfigError
from augdefense.params import OPTIONAL, Param, complete

ARCHS = ("resnet18_cifar", "resnet18_imagenet", "convnet")
MODEL_PARAMS = {
    "arch": Param(
        "string",
        "resnet18_cifar (3x3 stem, no max-pool), torchvision's ImageNet ResNet-18, or a "
        "small ConvNet for the CPU presets",
        enum=ARCHS,
    ),
    "width": Param(
        "integer",
        "channels of the first layer (default: 64 for resnet18_cifar, 32 for convnet)",
        default=OPTIONAL,
        minimum=1,
    ),
    "norm": Param("string", "BatchNorm, or GroupNorm (per-sample DP-SGD)", default="batch", enum=("batch", "group")),
    "groups": Param("integer", "GroupNorm groups (capped at the channels)", default=32, minimum=1),
    "init": Param(
        "string",
        "forest: forest's ResNet initialisation (kaiming_normal fan_out convolutions, norm weight 1 bias 0); "
        "pytorch: PyTorch's layer defaults (default: forest for the ResNets, pytorch for convnet)",
        default=OPTIONAL,
        enum=("forest", "pytorch"),
    ),
}
# An architecture's width and initialisation when the config gives none.
DEFAULT_WIDTH = {"resnet18_cifar": 64, "convnet": 32}
DEFAULT_INIT = {"resnet18_cifar": "forest", "resnet18_imagenet": "forest", "convnet": "pytorch"}


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(groups, channels), channels)


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions, [N, C, H, W] -> [N, C]. nn.AdaptiveAvgPool2d(1) computes the
    same (bit for bit on the CPU), but its CUDA backward has no deterministic implementation, so
    ``runtime.deterministic: true`` could not train with it on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-18 for 32x32 inputs as used by the papers (and Geiping et al.): 3x3 stem, no max-pool."""

    def __init__(self, in_channels: int, num_classes: int, width: int, norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = norm(width)
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.pool(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class ConvNet(nn.Module):
    """conv(w)-conv(2w)-conv(4w) with norm, ReLU and max-pools, global average pool (CPU presets)."""

    def __init__(self, in_channels: int, num_classes: int, width: int, norm, image_size: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU()]
        if image_size >= 16:  # one extra pool so 16x16 inputs cost what 8x8 ones do
            blocks.append(nn.MaxPool2d(2))
        cin = width
        for cout in (2 * width, 4 * width):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.body = nn.Sequential(*blocks, GlobalAvgPool())
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def build(spec: dict, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    spec = complete(spec, MODEL_PARAMS, "model")
    arch, groups = spec["arch"], spec["groups"]

    def norm(channels: int) -> nn.Module:
        return _norm(spec["norm"], channels, groups)

    if arch == "resnet18_imagenet":
        if in_channels != 3:
            raise ConfigError("model.arch: resnet18_imagenet needs 3-channel images")
        model = _resnet18_imagenet(num_classes, norm)
    else:
        width = spec.get("width", DEFAULT_WIDTH[arch])
        if arch == "resnet18_cifar":
            model = ResNetCifar(in_channels, num_classes, width, norm)
        else:
            model = ConvNet(in_channels, num_classes, width, norm, image_size)
    init = spec.get("init", DEFAULT_INIT[arch])
    if init == "forest" and arch != "resnet18_imagenet":  # torchvision's ResNet initialises so already
        forest_init(model)
    elif init == "pytorch" and arch == "resnet18_imagenet":
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
    return model


def forest_init(model: nn.Module) -> None:
    """forest's ResNet initialisation (``forest/victims/models.py``, ``ResNet.__init__``): convolutions
    ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, BatchNorm and GroupNorm weight 1 and
    bias 0; linear layers keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer (``linear`` in our models, ``fc`` in torchvision's)."""
    return model.linear if hasattr(model, "linear") else model.fc


def load(path, dataset, *, head_may_differ: bool = False) -> nn.Module:
    """A model saved by a training job (crafting model, feature model, extractor), rebuilt from its
    own spec for ``dataset``. With ``head_may_differ``, an extractor pretrained on a dataset with
    other classes (CIFAR-100 for a CIFAR-10 victim) loads without its classifier head, which keeps
    its fresh initialisation: only its features are used, or the head is reset and fine-tuned."""
    from augdefense.io import load_tensors

    saved = load_tensors(path, {"state_dict": dict, "model": dict})
    model = build(saved["model"], dataset.image_shape[0], dataset.num_classes, dataset.image_shape[-1])
    state = dict(saved["state_dict"])
    head = classifier_head(model)
    prefix = next(name for name, module in model.named_modules() if module is head) + "."
    head_keys = [k for k in state if k.startswith(prefix)]
    if head_may_differ and any(state[k].shape != head.state_dict()[k[len(prefix) :]].shape for k in head_keys):
        for k in head_keys:
            del state[k]
        state.update({prefix + k: v for k, v in head.state_dict().items()})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit model {saved['model']}: {exc}") from None
    return model


def _resnet18_imagenet(num_classes: int, norm) -> nn.Module:
    from torchvision.models.resnet import BasicBlock as TVBlock
    from torchvision.models.resnet import ResNet

    class ResNetImageNet(ResNet):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return x.mean(dim=(2, 3))  # as GlobalAvgPool: deterministic on CUDA

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x))

    return ResNetImageNet(TVBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=norm)
