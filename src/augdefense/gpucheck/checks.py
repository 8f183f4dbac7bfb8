"""The check's other steps: a Witches' Brew iteration at paper scale, one victim epoch through the
real job function, the tests marked ``gpu`` (through pytest, where it is installed) and the streamed
data path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from augdefense.gpucheck.workload import RECIPE, Workload, synthetic

REPO = Path(__file__).resolve().parents[3]


class Skipped(Exception):
    """A step that cannot run here, and why (recorded as skipped, not failed)."""


def crafting_iteration(work: Workload, device: torch.device) -> dict:
    """Seconds of one Witches' Brew iteration (all poisons, one restart) on the paper's model: the
    difference between brewing 3 and 1 iterations, halved, so set-up is not counted."""
    from augdefense import models
    from augdefense.attacks.base import CraftingContext
    from augdefense.attacks.gradient_matching import brew
    from augdefense.training import Normalizer

    dataset = synthetic(work.shape, work.poisons + 1)
    model = models.build(work.model, work.shape[0], 10, work.shape[-1]).to(device).eval()
    context = CraftingContext(model, Normalizer(dataset.mean, dataset.std).to(device), device)
    images = dataset.train_images[: work.poisons].float() / 255
    labels = dataset.train_labels[: work.poisons]
    target = dataset.test_images[:1].float() / 255

    def timed(iterations: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        brew(
            context,
            images,
            labels,
            target,
            1,
            eps=16 / 255,
            iterations=iterations,
            restarts=1,
            batch_size=work.craft_batch,
            shift=4,
            flip=True,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed(1)  # warm-up
    one, three = timed(1), timed(3)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"poisons": work.poisons, "seconds_per_iteration": max(three - one, 0.0) / 2, "peak_memory_gib": peak}


def pipeline_epoch(work: Workload, device: torch.device, folder: Path) -> dict:
    """One victim for one epoch through the real job functions: a synthetic prepared dataset, a
    patch poison crafted by ``jobs.craft``, trained by ``jobs.train.train_victim``."""
    from augdefense.io import save_tensors
    from augdefense.jobs.craft import craft_poison
    from augdefense.jobs.train import TrainingJob, train_victim

    data = folder / "data.pt"
    save_tensors(data, synthetic(work.shape, work.images).to_dict())
    craft_poison(
        data=str(data),
        attack_name="patch",
        attack={"type": "patch", "recipe": "r", "patch_size": 4},
        seed=0,
        out=str(folder / "poison.pt"),
    )
    job = TrainingJob(
        data=str(data),
        poison=str(folder / "poison.pt"),
        model=work.model,
        seed=0,
        recipe={**RECIPE, "epochs": 1, "batch_size": work.batch},
        runtime={"device": device.type, "amp": device.type == "cuda"},
    )
    start = time.perf_counter()
    record = train_victim(job, attack="patch", out=str(folder / "run.json"))
    return {
        "seconds": time.perf_counter() - start,
        "train_seconds": record["train_seconds"],
        "device": record["device"],
        "clean_acc": record["clean_acc"],
    }


def gpu_test_files() -> list[Path]:
    """The test modules with tests marked ``gpu``: only these are collected, so that a test module
    needing what a bare GPU node lacks (pandas, scikit-learn, ...) is never imported."""
    return sorted(f for f in (REPO / "tests").glob("test_*.py") if "pytest.mark.gpu" in f.read_text())


def gpu_tests(folder: Path, device: torch.device) -> dict:
    """The tests marked ``gpu`` (on the CPU when there is no GPU), through pytest; skipped, saying so,
    where pytest is not installed."""
    import xml.etree.ElementTree as ET

    try:
        import pytest  # noqa: F401  (only whether it imports: the tests run in their own process)
    except ImportError as err:
        raise Skipped(f"pytest is not importable ({err}); pip install pytest to run the tests marked gpu") from None
    files = gpu_test_files()
    if not files:
        raise Skipped(f"no test module with tests marked gpu under {REPO / 'tests'}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if device.type != "cuda":
        env["AUGDEFENSE_GPU_TESTS_ON_CPU"] = "1"
    report = folder / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    done = subprocess.run([*command, *map(str, files)], env=env, capture_output=True, text=True, cwd=REPO)
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [
        c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None
    ]
    return {
        "files": [str(f.relative_to(REPO)) for f in files],
        "tests": int(suite.get("tests")),
        "failures": int(suite.get("failures")) + int(suite.get("errors")),
        "skipped": int(suite.get("skipped")),
        "failed": failed,
        "exit_code": done.returncode,
        "output_tail": done.stdout[-2000:],
    }


def data_path(work: Workload) -> dict:
    """The streamed ImageFolder data path (``bench.data_path``): ms per ImageNet-sized JPEG."""
    from augdefense.bench.data_path import bench_data_path

    return bench_data_path(work.jpegs, sorted(set(work.loader_workers)))
