"""What the GPU check runs: the paper-scale workload and the toy one CI runs, synthetic CIFAR-shaped
data, the device's description, its measured bf16 rate and the model's FLOPs per training image."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch

# The paper-scale workload, and the toy one CI runs.
PAPER = {
    "model": {"arch": "resnet18_cifar", "width": 64},
    "shape": (3, 32, 32),
    "images": 12800,
    "epochs": 3,
    "batch": 128,
    "poisons": 500,
    "craft_batch": 512,
    "concurrency": (1, 2, 4),
    "compiled": ("none",),
    "jpegs": 2048,
    "loader_workers": (0, 8, os.cpu_count() or 1),
    "cifar_patch_size": 4,
    "cifar_epochs": None,  # as many as fit the time budget
}
TINY = {
    "model": {"arch": "convnet", "width": 8},
    "shape": (3, 8, 8),
    "images": 512,
    "epochs": 2,
    "batch": 128,
    "poisons": 16,
    "craft_batch": 16,
    "concurrency": (1, 2),
    "compiled": (),
    "jpegs": 16,
    "loader_workers": (0,),
    "cifar_patch_size": 2,
    "cifar_epochs": 2,
}
# The defenses whose training cost the estimate needs, as config.yaml writes them (a test checks
# they match): every kind of step the grid trains with, DP-InstaHide's Laplacian noise among them.
DEFENSES = {
    "none": {"type": "none"},
    "mixup": {"type": "mixup", "k": 2, "alpha": 1.0},
    "cutmix": {"type": "cutmix", "alpha": 1.0, "p": 0.5},
    "maxup_cutout": {"type": "maxup", "m": 4, "start_epoch": 0, "inner": {"type": "cutout", "size": 16}},
    "dpsgd_batch": {"type": "dpsgd_batch", "clip": 1.0, "noise": 1e-2},
    "dpinstahide_k4_s8": {"type": "mixup", "k": 4, "weights": "equal", "laplace": 8},
}
RECIPE = {
    "milestones": [],
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "crop_pad": 4,
    "flip": True,
}


@dataclass
class Workload:
    model: dict
    shape: tuple
    images: int
    epochs: int
    batch: int
    poisons: int
    craft_batch: int
    concurrency: tuple
    compiled: tuple  # defenses also measured with runtime.compile on
    jpegs: int
    loader_workers: tuple
    cifar_patch_size: int
    cifar_epochs: int | None


def synthetic(shape: tuple, n: int, classes: int = 10, seed: int = 0):
    """A CIFAR-shaped dataset of random uint8 images and labels (``data.Dataset``)."""
    from augdefense.data import Dataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    test = torch.randint(0, 256, (max(n // 5, classes), *shape), generator=g, dtype=torch.uint8)
    return Dataset(
        images,
        labels,
        test,
        torch.arange(len(test)) % classes,
        [str(c) for c in range(classes)],
        torch.full((shape[0],), 0.5),
        torch.full((shape[0],), 0.25),
    )


def check_device() -> torch.device:
    """The device the check measures: the first GPU, else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def device_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=[props.major, props.minor],
            multiprocessors=props.multi_processor_count,
        )
    return info


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float | None:
    """The card's measured bf16 matrix-product rate (TFLOP/s): the peak the training rate is held against."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def training_flops_per_image(model_spec: dict, shape: tuple, device: torch.device) -> float:
    """Model FLOPs of one training image (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from augdefense import models

    model = models.build(model_spec, shape[0], 10, shape[-1]).to(device)
    x = torch.randn(8, *shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8
