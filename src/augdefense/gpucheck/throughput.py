"""The victim's training throughput per defense, and k training processes sharing the device
(``runtime.jobs_per_gpu`` = k)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from augdefense.gpucheck.workload import DEFENSES, RECIPE, Workload, synthetic


def training_throughput(
    work: Workload,
    defense: dict,
    device: torch.device,
    compile_model: bool,
    seed: int = 0,
    barrier: tuple[Path, Path] | None = None,
) -> dict:
    """Images/s of the victim's training loop (``training.train``): a first epoch pays for warm-up
    and compilation, then the median epoch of the rest. With ``barrier`` (ready, go): after the first
    epoch, create ``ready`` and wait for ``go``, so concurrent processes time the same window."""
    from augdefense import defenses, models
    from augdefense.training import Normalizer, Recipe, train

    dataset = synthetic(work.shape, work.images, seed=seed)
    model = models.build(work.model, work.shape[0], 10, work.shape[-1])
    normalizer = Normalizer(dataset.mean, dataset.std)
    built = defenses.build(defense, 10, seed=seed, data_mean=dataset.mean)
    amp = device.type == "cuda"

    def epochs(n: int) -> list[float]:
        recipe = Recipe.from_spec({**RECIPE, "epochs": n, "batch_size": work.batch})
        history = train(
            model,
            dataset.train_images,
            dataset.train_labels,
            built,
            recipe,
            normalizer,
            device,
            seed,
            amp=amp,
            compile_model=compile_model,
        )
        return [h["seconds"] for h in history]

    first = epochs(1)[0]
    if barrier is not None:
        ready, go = barrier
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
    started = time.time()
    seconds = epochs(work.epochs - 1)
    return {
        "images_per_s": work.images / statistics.median(seconds),
        "first_epoch_s": first,
        "epoch_s": seconds,
        "started": started,
        "finished": time.time(),
        "images": work.images * len(seconds),
    }


def concurrent_throughput(work: Workload, k: int, device: torch.device) -> dict:
    """k training processes (defense none) on one device, timed over the same window: the aggregate
    images/s is all their images over the window from the first start to the last finish."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        ready = [Path(tmp) / f"{i}.json" for i in range(k)]
        args = [json.dumps(asdict(work)), str(device)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "augdefense.gpucheck", "--worker", str(out), str(go), *args],
                env=os.environ.copy(),
            )
            for out in ready
        ]
        while not all(Path(f"{r}.ready").exists() for r in ready):
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"a concurrent training process failed (k = {k})")
            time.sleep(0.05)
        go.touch()
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"a concurrent training process failed (k = {k})")
        runs = [json.loads(r.read_text()) for r in ready]
    window = max(r["finished"] for r in runs) - min(r["started"] for r in runs)
    return {
        "processes": k,
        "aggregate_images_per_s": sum(r["images"] for r in runs) / window,
        "per_process_images_per_s": [r["images_per_s"] for r in runs],
    }


def worker(out: str, go: str, work_json: str, device: str) -> int:
    """One of the concurrent training processes (``python -m augdefense.gpucheck --worker ...``)."""
    work = Workload(**json.loads(work_json))
    if device == "cpu":
        torch.set_num_threads(1)  # k processes on a few cores: no oversubscription
    result = training_throughput(
        work, DEFENSES["none"], torch.device(device), False, barrier=(Path(f"{out}.ready"), Path(go))
    )
    Path(out).write_text(json.dumps(result))
    return 0
