"""The trigger images of Schwarzschild et al.'s poisoning benchmark (aks2203/poisoning-benchmark,
``poison_crafting/triggers/``; MIT licence in ``LICENSE-poisoning-benchmark.txt`` beside them):
``htbd.png`` (80x80 RGB) for the hidden-trigger backdoor, ``clbd.png`` (5x5 RGB) for the clean-label
backdoor.

The benchmark's crafting scripts (``craft_poisons_htbd.py``, ``craft_poisons_clbd.py``, ``main``)
open the file, ``convert("RGB")`` it and apply ``transforms.Resize((p, p))`` then ``ToTensor`` to
the PIL image. On a PIL image torchvision 0.29's ``resize`` returns the image untouched when it
already has that size, and otherwise calls ``img.resize((p, p), Image.BILINEAR)`` (PIL's bilinear
filter, which antialiases when it shrinks). ``load`` makes the same PIL calls, written out so that a
crafting job need not import torchvision; a test compares the two.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import torch

# Spelled out as codedeps reads package data, so the crafting rule lists both images among its inputs.
PATHS = {
    "htbd.png": resources.files("augdefense").joinpath("attacks/triggers/htbd.png"),
    "clbd.png": resources.files("augdefense").joinpath("attacks/triggers/clbd.png"),
}
FILES = tuple(PATHS)


def load(name: str, size: int, channels: int) -> torch.Tensor:
    """The benchmark's trigger ``name`` resized to ``size`` x ``size`` as uint8 [channels, size, size].
    For single-channel data (the digits demo) the resized RGB trigger is converted to PIL's
    luminance ("L"); the benchmark itself only ran RGB data."""
    if name not in FILES:
        raise ValueError(f"unknown trigger {name!r}; shipped: {FILES}")
    if channels not in (1, 3):
        raise ValueError(f"the benchmark's triggers are RGB: {channels}-channel images cannot take them")
    return _load(name, size, channels).clone()


@cache
def _load(name: str, size: int, channels: int) -> torch.Tensor:
    from PIL import Image

    with resources.as_file(PATHS[name]) as path, Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):  # torchvision's resize leaves an image of the right size alone
            img = img.resize((size, size), Image.BILINEAR)
        if channels == 1:
            img = img.convert("L")
        array = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
