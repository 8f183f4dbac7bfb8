"""The papers' baseline augmentation (random crop with zero padding + horizontal flip), batched;
and, as an option for streamed ImageFolder data, the common ImageNet recipe per image in the loader.

torchvision.transforms.v2.RandomCrop draws one offset per call, i.e. one per batch when given a
batch; the papers crop each image independently, so this is written by hand, on the training
device, with no Python loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by ``pad`` zeros on every side, then crop back to the input size at a uniform offset per image."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), device=x.device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def baseline(x: torch.Tensor, crop_pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    x = random_crop(x, crop_pad, generator)
    return random_flip(x, 0.5, generator) if flip else x


def random_resized_crop(size: int, flip: bool):
    """Per image in the DataLoader workers (``recipe.crop: random_resized``): torchvision's
    ``RandomResizedCrop`` to ``size`` and a horizontal flip, the usual ImageNet training recipe.
    forest trains ImageNet on the fixed centre crop with its batched random shift instead
    (``crop: pad``, the default), which is what Table 3's numbers used."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, antialias=True)] + ([v2.RandomHorizontalFlip()] if flip else [])
    return v2.Compose(steps)
