"""The streamed data path (``data.storage: stream``): seconds per image to decode generated
ImageNet-sized JPEGs to forest's 224-px centre crop and batch them, per DataLoader worker count."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from augdefense import data

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_JPEG_SIZE = (500, 375)


def _imagenet_like_jpegs(folder: Path, n: int) -> list[str]:
    """``n`` JPEGs of a common ImageNet size: smooth colour fields with texture, so that they
    compress (and decode) like photographs rather than like noise."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    width, height = IMAGENET_JPEG_SIZE
    files = []
    for i in range(n):
        coarse = rng.random((height // 25, width // 25, 3)) * 255
        field = np.kron(coarse, np.ones((25, 25, 1)))
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        files.append(str(path))
    return files


def bench_data_path(n: int, worker_counts: list[int], batch_size: int = 64) -> dict:
    """Seconds per image through the streamed loader (decode, resize, centre crop, batch), per
    number of DataLoader workers; the best projects one ImageNet epoch's data path here."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="augdefense-jpegs-") as folder:
        return _time_data_path(_imagenet_like_jpegs(Path(folder), n), worker_counts, batch_size)


def _time_data_path(files: list[str], worker_counts: list[int], batch_size: int) -> dict:
    n = len(files)
    images = data.ImageFiles(files, 224)
    images[: min(n, 8)]  # PIL's decoders load on first use: not part of the rate
    rows = []
    for workers in worker_counts:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(batch_size)
        start = time.perf_counter()
        count = sum(len(batch) for batch in data.loader(images, order, workers=workers))
        seconds = time.perf_counter() - start
        rows.append({"workers": workers, "ms_per_image": round(1000 * seconds / count, 3)})
    best = min(r["ms_per_image"] for r in rows)
    mean_bytes = sum(os.path.getsize(f) for f in files) / n
    return {
        "images": n,
        "jpeg_size": list(IMAGENET_JPEG_SIZE),
        "mean_jpeg_kb": round(mean_bytes / 1024, 1),
        "batch_size": batch_size,
        "rows": rows,
        "imagenet_epoch_minutes": round(best * IMAGENET_TRAIN_IMAGES / 1000 / 60, 1),
    }
