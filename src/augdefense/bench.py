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

import argparse
import itertools
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augdefense import data, defenses, models
from augdefense.attacks.base import CraftingContext
from augdefense.io import atomic_path, write_json
from augdefense.training import Normalizer, Recipe, train

DEFENSES = {
    "none": {"type": "none"},
    "mixup k=2": {"type": "mixup", "k": 2, "alpha": 1.0},
    "mixup k=4": {"type": "mixup", "k": 4, "alpha": 1.0},
    "cutmix": {"type": "cutmix", "alpha": 1.0, "p": 0.5},
    "cutout": {"type": "cutout", "size": 8},
    "maxup (4 cutouts)": {"type": "maxup", "m": 4, "start_epoch": 0, "inner": {"type": "cutout", "size": 8}},
    "laplace s=8": {"type": "none", "laplace": 8},
    "dpsgd (batch)": {"type": "dpsgd_batch", "clip": 1.0, "noise": 1e-3},
    "dpsgd (opacus)": {"type": "dpsgd_opacus", "clip": 1.0, "noise_multiplier": 1.0},
}
# Per-sample DP-SGD cannot train BatchNorm: its row uses the GroupNorm variant of the model, both loops.
GROUP_NORM = {"dpsgd (opacus)"}
EPOCHS = 3  # per measurement, so each lasts seconds rather than a fraction of one


def _reference_loader(dataset: data.Dataset, n: int, recipe: Recipe, workers: int):
    """The common way: per-sample v2 transforms in a Dataset, batched by a DataLoader."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(dataset.image_shape[-1], padding=recipe.crop_pad)]
    if recipe.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    transform = v2.Compose(steps)
    images, labels = dataset.train_images[:n], dataset.train_labels[:n]

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return transform(tv_tensors.Image(images[i])), labels[i]

    return torch.utils.data.DataLoader(Images(), batch_size=recipe.batch_size, shuffle=True, num_workers=workers)


def _reference_training(model, loader, defense, recipe, normalizer, n: int) -> None:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    trained, step_optimizer = defense.wrap_training(model, optimizer, n, recipe.batch_size)
    model.train()
    for epoch in range(recipe.epochs):
        for x, y in loader:
            loss = defense.loss(lambda batch: trained(normalizer(batch)), x.as_subclass(torch.Tensor), y, epoch)
            step_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            defense.process_gradients(model)
            step_optimizer.step()


def bench_training(
    dataset: data.Dataset, model_spec: dict, n: int, batch_size: int, repeats: int, workers: int, names: list[str]
) -> list[dict]:
    recipe = Recipe.from_spec(
        {"epochs": EPOCHS, "milestones": [], "batch_size": batch_size, "crop_pad": 2, "flip": True}
    )
    normalizer = Normalizer(dataset.mean, dataset.std)
    shape = dataset.image_shape
    rows = []
    for name in names:
        spec = DEFENSES[name]
        timings = {"ours": [], "reference": []}
        for repeat in range(repeats + 1):  # the first round warms up and is not counted
            for which in ("ours", "reference"):
                torch.manual_seed(repeat)
                spec_model = {**model_spec, "norm": "group", "groups": 8} if name in GROUP_NORM else model_spec
                model = models.build(spec_model, shape[0], dataset.num_classes, shape[-1])
                defense = defenses.build(spec, dataset.num_classes, name=name, seed=repeat, data_mean=dataset.mean)
                start = time.perf_counter()
                if which == "ours":
                    train(
                        model,
                        dataset.train_images[:n],
                        dataset.train_labels[:n],
                        defense,
                        recipe,
                        normalizer,
                        torch.device("cpu"),
                        seed=repeat,
                        amp=False,
                    )  # includes its per-epoch logging
                else:
                    _reference_training(
                        model, _reference_loader(dataset, n, recipe, workers), defense, recipe, normalizer, n
                    )
                if repeat:
                    timings[which].append(n * EPOCHS / (time.perf_counter() - start))
        ours, ref = statistics.median(timings["ours"]), statistics.median(timings["reference"])
        rows.append(
            {
                "defense": name,
                "ours_images_per_s": round(ours, 1),
                "reference_images_per_s": round(ref, 1),
                "ratio": round(ours / ref, 2),
                "repeats": repeats,
            }
        )
    return rows


CRAFT_BUDGET = 0.01  # share of the training set poisoned (the papers' and our attack's default): 14 of 1437
CRAFT_EPS = 16 / 255
CRAFT_BATCH = 512  # poisons per step, both sides: every poison in one batch, one optimizer step per iteration
CRAFT_MODEL_EPOCHS = 3  # clean training of the crafting model before the measurement (none in --tiny)


def _import_art():
    """ART's attack and PyTorch estimator; ImportError when ART (or what it needs) is missing."""
    import art
    from art.attacks.poisoning import GradientMatchingAttack
    from art.estimators.classification import PyTorchClassifier

    return art.__version__, GradientMatchingAttack, PyTorchClassifier


def _matching_loss(
    context: CraftingContext, poisons: torch.Tensor, labels: torch.Tensor, target: torch.Tensor, intended: int
) -> float:
    """1 - cos(poison-batch gradient, target gradient) over all parameters: the objective both
    implementations minimise, computed the same way for both outputs."""
    params = [p for p in context.model.parameters() if p.requires_grad]
    target_loss = F.cross_entropy(context.logits(target), torch.tensor([intended]))
    target_grad = torch.autograd.grad(target_loss, params)
    grads = torch.autograd.grad(F.cross_entropy(context.logits(poisons), labels), params)
    dot = sum((g * t).sum() for g, t in zip(grads, target_grad))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)) * torch.sqrt(sum(t.pow(2).sum() for t in target_grad))
    return float(1 - dot / norm)


def bench_crafting(
    dataset: data.Dataset,
    model_spec: dict,
    iterations: int,
    repeats: int,
    model_epochs: int,
    budget: float = CRAFT_BUDGET,
    seed: int = 0,
) -> dict:
    """Seconds per crafting iteration of our ``brew`` and of ART's GradientMatchingAttack (PyTorch
    path), same model, target, intended class, number of poisons, eps, iterations, 1 restart, no
    augmentation. Each timing is one whole call divided by its iterations (so it includes each
    side's setup: the target gradient; for ART also its final pass over the poisons and the copy
    of the training set it returns). Medians over ``repeats``, after an uncounted 1-iteration round."""
    try:
        art_version, GradientMatchingAttack, PyTorchClassifier = _import_art()
    except ImportError as err:
        return {
            "skipped": f"IBM ART is not importable ({err}); pip install -e '.[bench]' to measure "
            "gradient-matching crafting against it"
        }
    from augdefense.attacks.gradient_matching import GradientMatching, brew

    shape, num_classes = dataset.image_shape, dataset.num_classes
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = models.build(model_spec, shape[0], num_classes, shape[-1])
    normalizer = Normalizer(dataset.mean, dataset.std)
    if model_epochs:
        train(
            model,
            dataset.train_images,
            dataset.train_labels,
            defenses.build({"type": "none"}, num_classes),
            Recipe.from_spec({"epochs": model_epochs, "milestones": [], "crop_pad": 2, "flip": True}),
            normalizer,
            device,
            seed=seed,
            amp=False,
        )
    model.eval()
    context = CraftingContext(model, normalizer, device)

    # The target and intended class as our attack draws them for this seed.
    draw = GradientMatching({"type": "gradient_matching", "recipe": "bench", "budget": budget}, name="bench").draw(
        dataset, seed
    )
    intended, n = draw["intended_class"], len(draw["indices"])
    target = dataset.test_images[draw["target_index"]][None].float() / 255
    x_train = dataset.train_images.float().div(255).numpy()
    y_train = dataset.train_labels.numpy()
    total = len(y_train)
    # ART takes the whole training set and a share, and poisons the first int(share x N) of a
    # np.random permutation of the intended class's images: seeded here, so both sides craft the same images.
    percent_poison = (n + 0.5) / total  # int(percent_poison * N) == n exactly
    np.random.seed(seed)
    indices = np.random.permutation(np.flatnonzero(y_train == intended))[:n]
    images, labels = torch.from_numpy(x_train[indices]), torch.from_numpy(y_train[indices])

    # ART's attack calls ``classifier.model`` directly (its own ``preprocessing`` is not applied on
    # that path), so the normalisation is folded into the module it wraps. Same weights as ours. In
    # eval mode: ART puts the module back in the mode it found it in, and a fresh Sequential is in train mode.
    classifier = PyTorchClassifier(
        torch.nn.Sequential(normalizer, model).eval(),
        torch.nn.CrossEntropyLoss(),
        input_shape=tuple(shape),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )

    def ours(its: int) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        result = brew(
            context,
            images,
            labels,
            target,
            intended,
            eps=CRAFT_EPS,
            iterations=its,
            restarts=1,
            batch_size=CRAFT_BATCH,
            shift=0,
            flip=False,
            seed=seed,
        )
        return time.perf_counter() - start, images + result["delta"]

    def theirs(its: int) -> tuple[float, torch.Tensor]:
        # ART's default schedule (lr 0.1 until epoch 150 of 250, then /10 at 150, 200, 220) scaled to ``its``.
        milestones = [max(1, round(its * m / 250)) for m in (100, 150, 200, 220)]
        attack = GradientMatchingAttack(
            classifier,
            percent_poison=percent_poison,
            epsilon=CRAFT_EPS,
            max_trials=1,
            max_epochs=its,
            learning_rate_schedule=([1e-1, 1e-2, 1e-3, 1e-4], milestones),
            batch_size=CRAFT_BATCH,
            clip_values=(0.0, 1.0),
            verbose=0,
        )
        np.random.seed(seed)
        start = time.perf_counter()
        poisoned, _ = attack.poison(target.numpy(), np.array([intended]), x_train, y_train)
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)  # ART's backward also fills the model's .grad
        changed = np.flatnonzero(np.any(poisoned != x_train, axis=(1, 2, 3)))
        if not set(changed.tolist()) <= set(indices.tolist()):
            raise RuntimeError("ART poisoned other images than the benchmark expected (its selection changed?)")
        return elapsed, torch.from_numpy(poisoned[indices])

    timings: dict[str, list[float]] = {"ours": [], "art": []}
    poisons = {}
    for repeat in range(repeats + 1):  # round 0: one iteration each, to warm up; not counted
        its = iterations if repeat else 1
        order = (("ours", ours), ("art", theirs)) if repeat % 2 else (("art", theirs), ("ours", ours))
        for which, run in order:
            elapsed, poisons[which] = run(its)
            if repeat:
                timings[which].append(elapsed / its)
    ours_s, art_s = statistics.median(timings["ours"]), statistics.median(timings["art"])
    return {
        "poisons": n,
        "training_images": total,
        "percent_poison": round(percent_poison, 6),
        "target_class": draw["target_class"],
        "intended_class": intended,
        "eps": "16/255",
        "iterations": iterations,
        "restarts": 1,
        "batch_size": CRAFT_BATCH,
        "augmentation": "none (ART's loop has none; ours runs with shift=0, flip=False)",
        "crafting_model": f"{model_spec['arch']} width {model_spec.get('width')}, {model_epochs} clean epochs",
        "art_version": art_version,
        "repeats": repeats,
        "ours_seconds_per_iteration": round(ours_s, 4),
        "art_seconds_per_iteration": round(art_s, 4),
        "ratio": round(art_s / ours_s, 2),
        "ours_runs": [round(t, 4) for t in timings["ours"]],
        "art_runs": [round(t, 4) for t in timings["art"]],
        # the objective after the last repeat, computed the same way for both (a sanity check, not a
        # quality comparison: the two optimise in different parametrisations with their own step sizes)
        "matching_loss": {
            "clean": round(_matching_loss(context, images, labels, target, intended), 4),
            "ours": round(_matching_loss(context, poisons["ours"], labels, target, intended), 4),
            "art": round(_matching_loss(context, poisons["art"], labels, target, intended), 4),
        },
    }


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


def workflow_timings(root: Path) -> dict:
    """Wall time of the last Snakemake run here, and per rule family from the benchmark files."""
    out: dict = {}
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    for log in reversed(logs):
        match = re.search(r"Elapsed time: (\d+):(\d+):(\d+(?:\.\d+)?)", log.read_text(errors="replace"))
        if match:
            h, m, s = match.groups()
            out["last_run_wall_seconds"] = round(int(h) * 3600 + int(m) * 60 + float(s), 1)
            out["last_run_log"] = str(log)
            break
    rules: dict[str, list[float]] = {}
    for tsv in (root / "benchmarks").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if len(lines) >= 2:
            rules.setdefault(tsv.relative_to(root / "benchmarks").parts[0], []).append(float(lines[1].split("\t")[0]))
    out["rules"] = {
        rule: {"jobs": len(v), "median_seconds": round(statistics.median(v), 2), "total_seconds": round(sum(v), 1)}
        for rule, v in sorted(rules.items())
    }
    return out


def run_demo(repo: Path, workdir: Path, cores: int = 2, warm_worker: bool = True) -> dict:
    """Run the CPU demo in ``workdir`` from scratch and measure Snakemake's own CPU time (its
    process alone: its jobs are children, counted apart) by polling it."""
    import shutil
    import subprocess
    import sys

    import psutil

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--snakefile", str(repo / "Snakefile"), "-d", str(workdir), "--cores", str(cores)]
    cmd += ["--configfile", str(repo / "presets" / "quick.yaml"), "--config", f"warm_worker={warm_worker}"]
    start = time.perf_counter()
    worker_log = workdir / "logs" / "warm_worker.log"
    with open(workdir / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        watched, cpu = psutil.Process(proc.pid), 0.0
        worker, worker_cpu = None, 0.0
        while proc.poll() is None:
            try:
                times = watched.cpu_times()
                cpu = times.user + times.system
            except psutil.Error:
                break
            worker = worker or _warm_worker(worker_log)
            if worker is not None:
                try:
                    times = worker.cpu_times()  # its own: the forked jobs are counted by their benchmarks
                    worker_cpu = times.user + times.system
                except psutil.Error:
                    pass
            time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the demo failed (exit {proc.returncode}); see {workdir / 'snakemake.out'}")
    return {
        "wall_seconds": round(wall, 1),
        "snakemake_cpu_seconds": round(cpu, 1),
        "warm_worker_cpu_seconds": round(worker_cpu, 1) if worker is not None else None,
        "cores": cores,
    }


def _warm_worker(log: Path):
    """The warm worker's process, once its log names it (``augdefense.forkserver``)."""
    import psutil

    match = re.match(r"warm worker (\d+):", log.read_text()) if log.is_file() else None
    try:
        return psutil.Process(int(match.group(1))) if match else None
    except psutil.Error:
        return None


OVERHEAD_PHASES = ("startup", "imports", "verify_inputs", "load", "model", "write")


def job_breakdown(root: Path) -> dict:
    """Per rule: jobs, mean wall time (``benchmark:``) and mean seconds per phase (sidecars'
    ``timings``; ``other`` = the wall time no phase covers: bookkeeping, sidecars, interpreter
    exit); and the whole run's summed job time and overhead share."""
    import json

    from augdefense.timing import WORK

    jobs: dict[tuple[str, str], dict] = {}
    sidecars = itertools.chain((root / "results").rglob("*.prov.json"), (root / "resources").rglob("*.prov.json"))
    for sidecar in sidecars:
        record = json.loads(sidecar.read_text())
        if "timings" in record:
            jobs[(record["rule"], json.dumps(record["wildcards"], sort_keys=True))] = record
    rules: dict[str, list[dict]] = {}
    benchmarked_jobs: dict[str, int] = {}
    for (rule, _), record in jobs.items():
        wildcards = record["wildcards"]
        phases = dict(record["timings"])
        # Rules without a benchmark file (reporting): the runner's own measure, exit excluded.
        wall, benchmarked = sum(phases.get(p, 0.0) for p in ("startup", "imports", "verify_inputs", "job")), 0
        # The benchmark file is named by the wildcards in the output pattern's order, which the
        # sidecar (keys sorted) does not keep: try each order.
        for order in itertools.permutations(wildcards.values()) if wildcards else ():
            tsv = root / "benchmarks" / rule / ("/".join(order) + ".tsv")
            if tsv.is_file():
                wall, benchmarked = float(tsv.read_text().splitlines()[1].split("\t")[0]), 1
                break
        work = sum(phases.get(p, 0.0) for p in WORK)
        named = sum(phases.get(p, 0.0) for p in (*OVERHEAD_PHASES, *WORK))
        rules.setdefault(rule, []).append(
            {"wall": wall, "work": work, **{p: phases.get(p, 0.0) for p in OVERHEAD_PHASES}, "other": wall - named}
        )
        benchmarked_jobs[rule] = benchmarked_jobs.get(rule, 0) + benchmarked
    table, total, work_total = {}, 0.0, 0.0
    for rule, rows in sorted(rules.items()):
        n = len(rows)
        table[rule] = {
            "jobs": n,
            "benchmarked": benchmarked_jobs[rule],  # jobs whose wall time is their benchmark file's
            **{k: round(sum(r[k] for r in rows) / n, 2) for k in rows[0]},
        }
        total += sum(r["wall"] for r in rows)
        work_total += sum(r["work"] for r in rows)
    return {
        "rules": table,
        "summed_job_seconds": round(total, 1),
        "work_seconds": round(work_total, 1),
        "overhead_share": round(1 - work_total / total, 3) if total else None,
    }


def overhead_share(demo: dict) -> float | None:
    """Everything but the work, as a share of the jobs' summed wall time plus the warm worker's own
    CPU time (its imports, and the forks: time no job's benchmark holds)."""
    b = demo["breakdown"]
    total = b["summed_job_seconds"] + (demo.get("warm_worker_cpu_seconds") or 0.0)
    return round(1 - b["work_seconds"] / total, 3) if total else None


def _breakdown_markdown(demo: dict) -> list[str]:
    b = demo["breakdown"]
    worker = demo.get("warm_worker_cpu_seconds")
    lines = [
        f"The CPU demo from scratch: {demo['wall_seconds']} s wall on {demo['cores']} cores; Snakemake's own "
        f"process used {demo['snakemake_cpu_seconds']} s of CPU"
        + (f", the warm worker's {worker} s" if worker is not None else ", no warm worker")
        + f". Jobs' summed wall time {b['summed_job_seconds']} s, of which the work (training, crafting, "
        f"evaluation, filtering) {b['work_seconds']} s: overhead {100 * overhead_share(demo):.1f}% (of the "
        "jobs' time and the worker's CPU). Mean seconds per job:",
        "",
        "| rule | jobs | wall | start-up | imports | verify inputs | load | model | work | write | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rule, r in b["rules"].items():
        lines.append(
            f"| {rule} | {r['jobs']} | {r['wall']} | {r['startup']} | {r['imports']} | {r['verify_inputs']} | "
            f"{r['load']} | {r['model']} | {r['work']} | {r['write']} | {r['other']} |"
        )
    return lines


def _crafting_markdown(c: dict) -> list[str]:
    if "skipped" in c:
        return [f"Crafting (gradient matching vs IBM ART): skipped: {c['skipped']}"]
    loss = c["matching_loss"]
    return [
        f"Crafting, gradient matching (Witches' Brew) vs IBM ART {c['art_version']} `GradientMatchingAttack` "
        f"(PyTorch path): {c['poisons']} poisons ({100 * c['poisons'] / c['training_images']:.1f}% of the "
        f"{c['training_images']} training images, all of class {c['intended_class']}) for one target of class "
        f"{c['target_class']}, eps {c['eps']}, "
        f"{c['iterations']} iterations, {c['restarts']} restart, batch {c['batch_size']} (all poisons, one step "
        f"per iteration), augmentation {c['augmentation']}; crafting model {c['crafting_model']}. Seconds per "
        f"iteration = one whole call / its iterations (setup included), median of {c['repeats']} repeats "
        f"(each: ours {c['ours_runs']}, ART {c['art_runs']}; runs alternate which goes first).",
        "",
        "| crafting | ours (s/iteration) | ART (s/iteration) | ratio (ART / ours) |",
        "|---|---|---|---|",
        f"| gradient matching | {c['ours_seconds_per_iteration']} | {c['art_seconds_per_iteration']} | {c['ratio']}× |",
        "",
        f"Matching loss (1 − cos) after the last repeat, same formula for both: clean poisons {loss['clean']}, "
        f"ours {loss['ours']}, ART {loss['art']} (a sanity check, not a quality comparison: each uses its own "
        f"parametrisation and step sizes).",
    ]


def to_markdown(result: dict) -> str:
    m = result["machine"]
    if "training" not in result:  # --demo-only
        machine = f"Machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['when']}."
        return (
            "\n".join(["# augdefense benchmark: the demo", "", machine, "", *_breakdown_markdown(result["demo"])])
            + "\n"
        )
    lines = [
        "# augdefense benchmark",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads), torch {m['torch']}, "
        f"{m['when']}. Model {result['setup']['model']}, {result['setup']['images']} images of "
        f"{result['setup']['image_shape']}, batch {result['setup']['batch_size']}, median of "
        f"{result['setup']['repeats']} repeats of {EPOCHS} epochs each; reference DataLoader workers: "
        f"{result['setup']['workers']}. The opacus row uses the GroupNorm model in both loops.",
        "",
        "| defense | ours (images/s) | reference (images/s) | ratio |",
        "|---|---|---|---|",
    ]
    for row in result["training"]:
        if "skipped" in row:
            lines.append(f"| {row['defense']} | skipped: {row['skipped']} | | |")
        else:
            lines.append(
                f"| {row['defense']} | {row['ours_images_per_s']} | {row['reference_images_per_s']} | {row['ratio']}× |"
            )
    lines += ["", *_crafting_markdown(result["crafting"]), ""]
    dp = result.get("data_path")
    if dp:
        lines += [
            f"Streamed data path: {dp['images']} generated JPEGs of {dp['jpeg_size'][0]} x {dp['jpeg_size'][1]} "
            f"({dp['mean_jpeg_kb']} KiB each on average) decoded to the 224-px centre crop and batched by "
            f"{dp['batch_size']}:",
            "",
            "| DataLoader workers | ms per image |",
            "|---|---|",
            *(f"| {r['workers']} | {r['ms_per_image']} |" for r in dp["rows"]),
            "",
            f"At the best rate, one ImageNet epoch ({IMAGENET_TRAIN_IMAGES} images) spends "
            f"{dp['imagenet_epoch_minutes']} minutes in the data path on this machine.",
            "",
        ]
    wf = result["workflow"]
    if wf.get("last_run_wall_seconds") is not None:
        lines.append(f"Last workflow run in this folder: {wf['last_run_wall_seconds']} s wall time.")
    if wf.get("rules"):
        lines += ["", "| rule | jobs | median s | total s |", "|---|---|---|---|"]
        lines += [
            f"| {r} | {v['jobs']} | {v['median_seconds']} | {v['total_seconds']} |" for r, v in wf["rules"].items()
        ]
    if "demo" in result:
        lines += ["", *_breakdown_markdown(result["demo"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m augdefense.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite uses it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--demo", action="store_true", help="also run the CPU demo from scratch and break its jobs' time down"
    )
    parser.add_argument(
        "--craft-iterations",
        type=int,
        default=None,
        help="gradient-matching iterations per crafting measurement (20; 2 with --tiny)",
    )
    parser.add_argument("--jpegs", type=int, default=512, help="generated JPEGs the data-path measurement decodes")
    parser.add_argument("--demo-only", action="store_true", help="only the demo and its breakdown (implies --demo)")
    parser.add_argument(
        "--no-warm-worker", action="store_true", help="run the demo's jobs each in its own process (for comparison)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = data.build({"source": "digits", "image_size": 16})
    model_spec = {"arch": "convnet", "width": 32}
    n, repeats, names = (1437, args.repeats, list(DEFENSES)) if not args.tiny else (256, 1, ["none", "mixup k=2"])
    workers = 0 if args.tiny else args.workers
    craft_iterations = args.craft_iterations or (2 if args.tiny else 20)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    result = (
        {"machine": machine}
        if args.demo_only
        else {
            "machine": machine,
            "setup": {
                "model": "convnet width 32",
                "images": n,
                "image_shape": list(dataset.image_shape),
                "batch_size": 128,
                "repeats": repeats,
                "workers": workers,
            },
            "training": bench_training(dataset, model_spec, n, 128, repeats, workers, names),
            "crafting": bench_crafting(
                dataset, model_spec, craft_iterations, repeats, model_epochs=0 if args.tiny else CRAFT_MODEL_EPOCHS
            ),
            "data_path": bench_data_path(
                16 if args.tiny else args.jpegs, [0] if args.tiny else sorted({0, 1, os.cpu_count() or 1})
            ),
            "workflow": workflow_timings(Path(".")),
        }
    )
    if args.demo or args.demo_only:
        repo, workdir = Path(__file__).resolve().parents[2], Path("scratch") / "bench-demo"
        demo = run_demo(repo, workdir, warm_worker=not args.no_warm_worker)
        result["demo"] = {**demo, "breakdown": job_breakdown(workdir)}
        result["demo"]["overhead_share"] = overhead_share(result["demo"])
    out = Path(args.out)
    write_json(out / "bench.json", result)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
