"""The CIFAR-10 slice: Table 1's 100% column (``patch100``: every training image of the target class
carries the patch) under no defense and under CutMix, at the papers' backdoor recipe on ResNet-18, one
seed, through the workflow's own job functions (``jobs.craft.craft_poison``, ``jobs.train.train_victim``)
beside DP-InstaHide's Table 1 (98.3% and 14.1% backdoor success).

Data: the JPEG copy of CIFAR-10 (a ``.tar.gz`` or its extracted folder, ``train/<class>/*.jpg`` and
``test/<class>/*.jpg``) loaded by ``data.build`` as an ``imagefolder`` at 32 px, or torchvision's
CIFAR-10 (downloaded into ``resources/cifar10`` where the node is online). ``--tiny``: generated
images at the toy size, so CI runs the same path.

The recipe's 80 epochs do not fit the check's few minutes on one GPU: unless ``--cifar-epochs`` says
otherwise, the slice trains for as many epochs as fit in what is left of the check's time budget, at
the training rates the check measured a few steps before (milestones scaled alike), and says so.
"""

from __future__ import annotations

import csv
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from augdefense.gpucheck.workload import DEFENSES, Workload

# config.yaml's recipes.backdoor, attacks.patch100 and defenses none/cutmix (a test checks they match):
# the bare node this runs on has no YAML reader.
BACKDOOR_RECIPE = {
    "epochs": 80,
    "milestones": [30, 50, 70],
    "gamma": 0.1,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5.0e-4,
    "batch_size": 128,
    "crop_pad": 4,
    "flip": True,
}
PATCH100 = {"type": "patch", "recipe": "backdoor", "patch_size": 4, "fraction": 1.0}
SLICE_DEFENSES = {"none": DEFENSES["none"], "cutmix": DEFENSES["cutmix"]}
PAPER = ("dp-instahide", "table1", "patch100")  # paper_numbers.csv: DP-InstaHide's Table 1, 100% column
SEED = 0
IMAGE_SIZE = 32
# An allowance per victim for what its epochs do not cover (loading the data, building the model,
# evaluating), used only to choose how many epochs fit the budget.
VICTIM_OVERHEAD_SECONDS = 20.0
FALLBACK_EPOCHS = 10  # when no training rate was measured to fit the budget by


def cifar10_slice(
    work: Workload,
    device: torch.device,
    source: Path | None,
    *,
    seconds_left: float,
    epochs: int | None,
    rates: dict,
    flops_per_image: float | None,
    peak_tflops: float | None,
    tiny: bool,
) -> dict:
    """Craft the patch poison and train the two victims; their metrics beside the paper's. ``rates``:
    the measured training images/s per defense (to fit the epochs to ``seconds_left``)."""
    from augdefense import data
    from augdefense.io import save_tensors
    from augdefense.jobs.craft import craft_poison

    with tempfile.TemporaryDirectory(prefix="augdefense-cifar10-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        spec, described = data_spec(source, folder, work, tiny)
        dataset = data.build(spec)
        save_tensors(folder / "data.pt", dataset.to_dict())
        load_seconds = time.perf_counter() - start
        attack = {**PATCH100, "patch_size": work.cifar_patch_size}
        craft_poison(
            data=str(folder / "data.pt"), attack_name="patch100", attack=attack, seed=SEED, out=str(folder / "p.pt")
        )
        n_train = len(dataset.train_labels)
        forced, why = (epochs, "as given (--cifar-epochs)") if epochs else (work.cifar_epochs, "the toy size's")
        left = seconds_left - (time.perf_counter() - start)
        chosen, reason = choose_epochs(forced, why, left, rates, n_train)
        recipe = scaled_recipe(chosen)
        rows = [
            _victim(folder, work, device, name, defense, recipe, flops_per_image, peak_tflops)
            for name, defense in SLICE_DEFENSES.items()
        ]
    paper = paper_numbers()
    for row in rows:
        row.update({f"paper_{m}": paper.get((row["defense"], m)) for m in ("poison_success", "clean_acc")})
    return {
        "data": described,
        "spec": spec,
        "n_train": n_train,
        "n_test": len(dataset.test_labels),
        "load_seconds": round(load_seconds, 1),
        "model": work.model,
        "attack": attack,
        "seed": SEED,
        "epochs": chosen,
        "recipe_epochs": BACKDOOR_RECIPE["epochs"],
        "epochs_reason": reason,
        "milestones": recipe["milestones"],
        "rows": rows,
    }


def _victim(folder, work, device, name, defense, recipe, flops_per_image, peak_tflops) -> dict:
    from augdefense.jobs.train import TrainingJob, train_victim

    job = TrainingJob(
        data=str(folder / "data.pt"),
        poison=str(folder / "p.pt"),
        defense_name=name,
        defense=defense,
        model=work.model,
        recipe=recipe,
        runtime={"device": device.type, "amp": device.type == "cuda", "loader_workers": 0},
        seed=SEED,
    )
    start = time.perf_counter()
    record = train_victim(job, attack="patch100", out=str(folder / f"{name}.json"))
    images_per_s = record["n_train"] * record["epochs"] / record["train_seconds"] if record["train_seconds"] else None
    mfu = (
        images_per_s * flops_per_image / (peak_tflops * 1e12)
        if images_per_s and flops_per_image and peak_tflops
        else None
    )
    return {
        "defense": name,
        "poison_success": record["poison_success"],
        "clean_acc": record["clean_acc"],
        "images_per_s": images_per_s,
        "mfu": mfu,
        "train_seconds": record["train_seconds"],
        "victim_seconds": round(time.perf_counter() - start, 1),
        "device": record["device"],
    }


def choose_epochs(forced: int | None, why: str, seconds_left: float, rates: dict, n_train: int) -> tuple[int, str]:
    """How many of the recipe's epochs the slice trains, and why: ``forced`` (for the reason ``why``),
    else as many as fit ``seconds_left`` at the measured ``rates`` (images/s per defense)."""
    full = BACKDOOR_RECIPE["epochs"]
    if forced is not None:
        return forced, why if forced < full else "the recipe's"
    if not all(rates.get(name) for name in SLICE_DEFENSES):
        return FALLBACK_EPOCHS, "no training rate was measured to fit the time budget by"
    per_epoch = sum(n_train / rates[name] for name in SLICE_DEFENSES)
    fit = int((seconds_left - VICTIM_OVERHEAD_SECONDS * len(SLICE_DEFENSES)) / per_epoch)
    if fit >= full:
        return full, "the recipe's"
    return max(1, fit), (
        f"what fits the {max(seconds_left, 0):.0f} s left of the check's time budget at the measured training "
        f"rates ({per_epoch:.1f} s per epoch of both victims)"
    )


def scaled_recipe(epochs: int) -> dict:
    """The backdoor recipe shortened to ``epochs``, its learning-rate drops at the same shares of training."""
    full = BACKDOOR_RECIPE["epochs"]
    milestones = sorted({max(1, round(m * epochs / full)) for m in BACKDOOR_RECIPE["milestones"]} - {epochs})
    return {**BACKDOOR_RECIPE, "epochs": epochs, "milestones": [m for m in milestones if m < epochs]}


def data_spec(source: Path | None, folder: Path, work: Workload, tiny: bool) -> tuple[dict, str]:
    """The ``data.build`` entry for the slice's data, and what it is in words."""
    if source is None and tiny:
        root = generated_imagefolder(folder / "generated", work.shape[-1])
        return {"source": "imagefolder", "path": str(root), "image_size": work.shape[-1]}, "generated images"
    if source is None:
        return {"source": "cifar10", "root": "resources/cifar10"}, "CIFAR-10 through torchvision (resources/cifar10)"
    source = Path(source)
    if source.is_file():
        with tarfile.open(source) as archive:
            try:
                archive.extractall(folder / "extracted", filter="data")
            except TypeError:  # Python before 3.10.12 / 3.11.4: no extraction filters
                archive.extractall(folder / "extracted")
        root = _imagefolder_root(folder / "extracted", source)
    else:
        root = _imagefolder_root(source, source)
    size = work.shape[-1] if tiny else IMAGE_SIZE
    return {
        "source": "imagefolder",
        "path": str(root),
        "image_size": size,
    }, f"the JPEG copy of CIFAR-10 ({source.name})"


def _imagefolder_root(folder: Path, named: Path) -> Path:
    """``folder`` or its one subfolder, whichever holds ``train/`` and ``test/``."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []
    for candidate in candidates:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    from augdefense.errors import DataError

    raise DataError(f"{named}: no train/ and test/ class folders in it (or in its one subfolder)")


def generated_imagefolder(root: Path, size: int, classes: int = 10, train: int = 40, test: int = 10) -> Path:
    """A small imagefolder tree of JPEGs whose classes differ in colour (so a model learns them)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            colour = np.array([(37 * c) % 256, (91 * c + 40) % 256, (151 * c + 80) % 256], dtype=float)
            for i in range(n):
                pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i:04d}.jpg", quality=95)
    return root


def paper_numbers() -> dict:
    """{(defense, metric): value} of DP-InstaHide's Table 1, 100% column (``paper_numbers.csv``)."""
    path = Path(__file__).resolve().parents[1] / "paper_numbers.csv"
    with open(path, newline="") as f:
        return {
            (row["defense"], row["metric"]): float(row["value"])
            for row in csv.DictReader(f)
            if (row["paper"], row["table"], row["attack"]) == PAPER
        }
