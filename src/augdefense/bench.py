"""``make bench``: side-by-side speed measurements on this machine.

- Training-step throughput (images/s) of our loop, per defense, against a reference loop written
  the common way: a torchvision Dataset with per-sample ``transforms.v2`` and a DataLoader, with
  the same model, data, batch size, defense and optimizer. Medians over repeats.
- Gradient-matching crafting against IBM ART: skipped until the attack lands (and when ART is
  not installed), with the reason in the output.
- The workflow's wall time and each rule family's time, from Snakemake's log and ``benchmark:``
  files of the last run in this folder (run ``make demo`` first).

Writes ``results/bench/bench.json`` and ``results/bench/bench.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import; per-epoch bars would drown the table

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from augdefense import data, defenses, models
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
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    trained, step_optimizer = defense.wrap_training(model, optimizer, n, recipe.batch_size)
    model.train()
    for epoch in range(recipe.epochs):
        for x, y in loader:
            loss = defense.loss(lambda batch: trained(normalizer(batch)), x.as_subclass(torch.Tensor), y, epoch)
            step_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            defense.process_gradients(model)
            step_optimizer.step()


def bench_training(dataset: data.Dataset, model_spec: dict, n: int, batch_size: int, repeats: int,
                   workers: int, names: list[str]) -> list[dict]:
    recipe = Recipe(epochs=EPOCHS, milestones=(), batch_size=batch_size, crop_pad=2, flip=True)
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
                defense = defenses.build(spec, dataset.num_classes, name=name, seed=repeat)
                start = time.perf_counter()
                if which == "ours":
                    train(model, dataset.train_images[:n], dataset.train_labels[:n], defense, recipe, normalizer,
                          torch.device("cpu"), seed=repeat, amp=False)  # includes its per-epoch logging
                else:
                    _reference_training(model, _reference_loader(dataset, n, recipe, workers), defense, recipe,
                                        normalizer, n)
                if repeat:
                    timings[which].append(n * EPOCHS / (time.perf_counter() - start))
        ours, ref = statistics.median(timings["ours"]), statistics.median(timings["reference"])
        rows.append({"defense": name, "ours_images_per_s": round(ours, 1), "reference_images_per_s": round(ref, 1),
                     "ratio": round(ours / ref, 2), "repeats": repeats})
    return rows


def bench_crafting() -> dict:
    from importlib.util import find_spec

    if find_spec("art") is None:
        return {"skipped": "IBM ART is not installed (pip install -e .[bench]); and the gradient-matching "
                           "attack is not implemented yet"}
    return {"skipped": "the gradient-matching attack is not implemented yet"}


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
    out["rules"] = {rule: {"jobs": len(v), "median_seconds": round(statistics.median(v), 2),
                           "total_seconds": round(sum(v), 1)} for rule, v in sorted(rules.items())}
    return out


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# augdefense benchmark", "",
             f"Machine: {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads), torch {m['torch']}, "
             f"{m['when']}. Model {result['setup']['model']}, {result['setup']['images']} images of "
             f"{result['setup']['image_shape']}, batch {result['setup']['batch_size']}, median of "
             f"{result['setup']['repeats']} repeats of {EPOCHS} epochs each; reference DataLoader workers: "
             f"{result['setup']['workers']}. The opacus row uses the GroupNorm model in both loops.", "",
             "| defense | ours (images/s) | reference (images/s) | ratio |", "|---|---|---|---|"]
    for row in result["training"]:
        if "skipped" in row:
            lines.append(f"| {row['defense']} | skipped: {row['skipped']} | | |")
        else:
            lines.append(f"| {row['defense']} | {row['ours_images_per_s']} | {row['reference_images_per_s']} | "
                         f"{row['ratio']}× |")
    lines += ["", f"Crafting (gradient matching vs ART): {result['crafting'].get('skipped', result['crafting'])}", ""]
    wf = result["workflow"]
    if wf.get("last_run_wall_seconds") is not None:
        lines.append(f"Last workflow run in this folder: {wf['last_run_wall_seconds']} s wall time.")
    if wf.get("rules"):
        lines += ["", "| rule | jobs | median s | total s |", "|---|---|---|---|"]
        lines += [f"| {r} | {v['jobs']} | {v['median_seconds']} | {v['total_seconds']} |" for r, v in wf["rules"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m augdefense.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite uses it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = data.build({"source": "digits", "image_size": 16})
    model_spec = {"arch": "convnet", "width": 32}
    n, repeats, names = (1437, args.repeats, list(DEFENSES)) if not args.tiny else (256, 1, ["none", "mixup k=2"])
    workers = 0 if args.tiny else args.workers
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "setup": {"model": "convnet width 32", "images": n, "image_shape": list(dataset.image_shape),
                  "batch_size": 128, "repeats": repeats, "workers": workers},
        "training": bench_training(dataset, model_spec, n, 128, repeats, workers, names),
        "crafting": bench_crafting(),
        "workflow": workflow_timings(Path(".")),
    }
    out = Path(args.out)
    write_json(out / "bench.json", result)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
