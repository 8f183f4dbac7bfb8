"""``make gpu-check``: what the paper-scale run costs on this machine's GPU, whether its CUDA paths
work, and a real-data slice of Table 1, in one run of under 9 minutes on a bare GPU node: torch,
torchvision and numpy suffice (snakemake, opacus, pandas, scipy, scikit-learn, pyyaml, tqdm,
matplotlib and pytest may all be missing). From a checkout:

    PYTHONPATH=src python3 -m augdefense.gpucheck results/gpucheck --cifar10 cifar10-jpeg.tar.gz   # a GPU node
    PYTHONPATH=src python3 -m augdefense.gpucheck results/gpucheck --tiny   # any machine, minutes

It writes ``gpucheck.json`` and ``gpucheck.md`` into the folder given, whatever failed; each step's
failure is recorded with its message, and a step that cannot run here (pytest missing) is recorded
as skipped, with the reason:

- the paper-recipe ResNet-18 victim's training throughput (images/s, batch 128, AMP and
  channels-last on) under none, mixup, CutMix, MaxUp-cutout, batch DP-SGD and DP-InstaHide
  (4-way mixup + Laplacian noise), on CIFAR-shaped synthetic data, with ``compile`` on as well for
  none, and its share of the card's measured bf16 matrix-product rate (model FLOPs per image
  counted by torch's FlopCounterMode) (``throughput``);
- the aggregate throughput of k = 1, 2, 4 training processes sharing the GPU: ``runtime.jobs_per_gpu``;
- one Witches' Brew crafting iteration at paper scale (500 poisons, ResNet-18) (``checks``);
- one victim trained for one epoch through the real job function (``jobs.train.train_victim``);
- the streamed ImageFolder data path (``data.storage: stream``, Table 3): milliseconds per
  ImageNet-sized JPEG decoded by 0, 8 and all-cores DataLoader workers (``bench.data_path``);
- the tests marked ``gpu`` (bf16 against fp32, channels-last, GPU locks, a killed and resumed
  training, crafting and Laplacian noise on the device), through pytest: only their modules are
  collected;
- the CIFAR-10 slice (``cifar``): Table 1's 100% column, none against CutMix, at the backdoor
  recipe on ResNet-18, beside the paper's 98.3% and 14.1%, for as many epochs as the time left allows.

``--tiny`` does all of it at a toy size (ConvNet, 8x8 images, k = 1, 2, no compile, generated images
for the slice), on the CPU when there is no GPU (the gpu tests then run on the CPU): CI runs it so it
cannot rot. ``augdefense.estimate`` reads the JSON's per-image costs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import; per-epoch bars would drown the log

from augdefense.gpucheck.workload import synthetic, training_flops_per_image  # noqa: E402

__all__ = ["synthetic", "training_flops_per_image"]
