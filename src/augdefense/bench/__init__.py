"""``make bench``: side-by-side speed measurements on this machine.

- Training-step throughput (images/s) of our loop, per defense, against a reference loop written
  the common way: a torchvision Dataset with per-sample ``transforms.v2`` and a DataLoader, with
  the same model, data, batch size, defense and optimizer. Medians over repeats.
- Gradient-matching crafting (Witches' Brew) against IBM ART's ``GradientMatchingAttack``
  (PyTorch path): seconds per iteration of each, same model, target, poisons, eps, iterations,
  one restart and no augmentation (ART's loop has none). Skipped, with the reason, when ART is
  not installed (``pip install -e '.[bench]'``).
- The workflow's wall time and each rule family's time, from Snakemake's log and ``benchmark:``
  files of the last run in this folder (run ``make demo`` first).
- The streamed data path (``data.storage: stream``): seconds per image to decode generated
  ImageNet-sized JPEGs (500 x 375, a common ImageNet size) to forest's 224-px centre crop and
  batch them through the DataLoader, per worker count, and what that makes one ImageNet epoch
  (1 281 167 images) on this machine.
- With ``--demo``: the CPU demo run here from scratch (``presets/quick.yaml``, in
  ``scratch/bench-demo``), Snakemake's own CPU time over it (its process alone, not its jobs), and
  where each rule's jobs spend their time (``augdefense.timing``'s phases from the sidecars, the
  wall time from the ``benchmark:`` files): start-up, loading, model building, writing and the
  rest are overhead; training, crafting, evaluation and filtering are the work.

Writes ``results/bench/bench.json`` and ``results/bench/bench.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import; per-epoch bars would drown the table
