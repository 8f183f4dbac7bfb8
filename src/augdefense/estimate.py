"""``make estimate``: how many jobs a config runs, per table, and the device-hours they need.

    python -m augdefense.estimate config.yaml --costs results/gpucheck/gpucheck.json
    python -m augdefense.estimate presets/quick.yaml

The jobs are the workflow's own (``config.compute_jobs``, the paths the rules use; a test checks
the counts against a dry run). A job's cost is the images it trains on (epochs x its split) times
the per-image training cost of its defense, the crafting steps times their per-poison cost, plus a
start-up cost per job. Per-image costs come from a ``gpucheck.json`` (measured on a GPU, scaled by
the ratio of the config's model FLOPs per image to the measured model's), or else from stated
defaults: for a GPU config, the cost Geiping et al. report per 40-epoch ResNet-18 training on
CIFAR-10 (``FOREST_MINUTES_PER_TRAINING``, card unstated); for a CPU config, this project's ConvNet on one core
of its 2-core CI machine (README "Estimate", with the date). Costs that were assumed rather than
measured are named in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from augdefense import config as grid
from augdefense import sources

# The training cost Geiping et al. report for their framework (README "GPU check and cost estimate"),
# priced per training image: one 40-epoch ResNet-18 training on CIFAR-10's 50 000 images.
FOREST_MINUTES_PER_TRAINING = 9
FOREST_SECONDS_PER_IMAGE = FOREST_MINUTES_PER_TRAINING * 60 / (40 * 50_000)
GPU_DEFAULTS = {
    "source": f"assumed: Geiping et al.'s {FOREST_MINUTES_PER_TRAINING} min per 40-epoch ResNet-18 CIFAR-10 "
    "training, for every defense (MaxUp: m draws), and gradient matching at 3 training passes per poison and "
    "iteration",
    "training_seconds_per_image": {
        "none": FOREST_SECONDS_PER_IMAGE,
        "mixup": FOREST_SECONDS_PER_IMAGE,
        "cutmix": FOREST_SECONDS_PER_IMAGE,
        "maxup_cutout": 4 * FOREST_SECONDS_PER_IMAGE,
        "dpsgd_batch": FOREST_SECONDS_PER_IMAGE,
    },
    "crafting_seconds_per_iteration_per_poison": 3 * FOREST_SECONDS_PER_IMAGE,
    "model": {"arch": "resnet18_cifar", "width": 64},
    "shape": [3, 32, 32],
    "startup_seconds": 20.0,
}
# What a CPU config is priced with; "source" says where the figures were measured.
CPU_DEFAULTS = {
    "source": "measured: the demo's ConvNet on one thread of a 2-core AMD EPYC, 2026-12-05, the medians of "
    "five runs (docs/evidence/cpu_costs.txt)",
    "training_seconds_per_image": {
        "none": 1 / 7364.9,
        "mixup": 1 / 7553.6,
        "cutmix": 1 / 8262.3,
        "maxup_cutout": 1 / 2287.3,
        "dpsgd_batch": 1 / 8251.2,
    },
    "crafting_seconds_per_iteration_per_poison": 0.0333 / 72,
    "model": {"arch": "convnet", "width": 32},
    "shape": [1, 16, 16],
    # A job's overhead with the warm worker (docs/performance.md, "Where the demo's time goes").
    "startup_seconds": 0.5,
}
# Per-sample DP-SGD (opacus) is not measured (opacus is not on the GPU node): assumed this many times
# batch DP-SGD's cost.
OPACUS_FACTOR = 3.0


# The measured rows a gpucheck.json must hold to price a grid (image_cost's table).
REQUIRED_DEFENSES = ("none", "mixup", "cutmix", "maxup_cutout", "dpsgd_batch")
LAPLACE_ROW = "dpinstahide_k4_s8"  # a Laplacian-noise defense's cost, where the check measured it


def load_costs(path: str | Path | None, cpu: bool) -> dict:
    if path is None:
        return dict(CPU_DEFAULTS if cpu else GPU_DEFAULTS)
    from augdefense.errors import ConfigError

    measured = json.loads(Path(path).read_text())
    if measured.get("tiny"):
        raise ConfigError(f"{path}: costs of a --tiny gpucheck run (toy sizes) cannot price a real grid")
    failed = _failed_measurements(measured)
    if failed:
        raise ConfigError(
            f"{path}: the GPU check's measurements that price a grid failed or are missing: {'; '.join(failed)}. "
            "Rerun `make gpu-check` once they work"
        )
    costs = measured["costs"]
    return {
        "source": f"measured by gpucheck on {costs['device']} ({path})",
        "training_seconds_per_image": costs["training_seconds_per_image"],
        "crafting_seconds_per_iteration_per_poison": costs["crafting_seconds_per_iteration_per_poison"],
        "model": measured["workload"]["model"],
        "shape": measured["workload"]["shape"],
        "startup_seconds": GPU_DEFAULTS["startup_seconds"] if not cpu else CPU_DEFAULTS["startup_seconds"],
    }


def _failed_measurements(measured: dict) -> list[str]:
    """The rows of a gpucheck.json the estimate prices with that failed (named with the step's error)
    or are absent: every training row (compile off) and the crafting row."""
    steps = measured.get("steps") or {}
    priced = [f"throughput {name}" for name in REQUIRED_DEFENSES] + ["crafting"]
    priced += [name for name in steps if name.startswith("throughput ") and not name.endswith(" compiled")]
    failed = []
    for step in dict.fromkeys(priced):
        record = steps.get(step)
        if record is None:
            failed.append(f"{step} (not measured)")
        elif not record.get("ok"):
            failed.append(f"{step} ({record.get('error', 'failed')})")
    if "workload" not in measured or "costs" not in measured:
        failed.append("workload and costs (absent)")
    return failed


def flops_per_image(model: dict, shape: tuple) -> float:
    import torch

    from augdefense.gpucheck import training_flops_per_image

    return training_flops_per_image(model, tuple(shape), torch.device("cpu"))


def image_cost(defense: dict, costs: dict, scale: float, epochs: int) -> float:
    """Seconds per training image under ``defense``, on the config's model."""
    table = costs["training_seconds_per_image"]
    kind = defense["type"]
    if kind == "maxup":
        plain = min(defense["start_epoch"], epochs) / epochs
        worst = table["maxup_cutout"] * defense["m"] / 4 if defense.get("mode") != "forest" else table["none"]
        return scale * (plain * table["none"] + (1 - plain) * worst)
    if kind == "dpsgd_opacus":
        return scale * OPACUS_FACTOR * table["dpsgd_batch"]
    if defense.get("laplace", 0) > 0 and LAPLACE_ROW in table:
        return scale * table[LAPLACE_ROW]
    return scale * table.get(kind, table["none"])


def estimate(config: dict, costs: dict, scale: float) -> dict:
    """Seconds per job kind and per experiment, and the job counts."""
    facts = sources.facts(config["data"])
    none = {"type": "none"}

    def victim_images(recipe: dict) -> int:
        """Training images a victim of this recipe sees."""
        if "transfer" not in recipe:
            return facts.num_train
        return sum(sources.finetune_class_sizes(facts.train_class_sizes, recipe["transfer"]))

    def pretraining_images(recipe_name: str, key: str) -> int:
        what = grid.pretraining(config, recipe_name, key)
        if "pretrain_data" in what:
            return sources.facts(what["pretrain_data"]).num_train
        return sum(sources.pretrain_count(n, what["pretrain_share"]) for n in facts.train_class_sizes)

    def training(recipe: dict, defense: dict, images: int) -> float:
        return recipe["epochs"] * images * image_cost(defense, costs, scale, recipe["epochs"])

    def crafting(attack: dict, recipe: dict) -> float:
        if attack.get("control", False) or attack["type"] == "patch":
            return 0.0
        images = victim_images(recipe)
        per = costs["crafting_seconds_per_iteration_per_poison"] * scale
        if attack["type"] == "gradient_matching":
            return attack["iterations"] * attack["restarts"] * grid.budget_count(attack["budget"], images) * per
        steps = attack.get("iterations", attack.get("steps", 1))
        return steps * attack["n_poisons"] * costs["training_seconds_per_image"]["none"] * scale

    startup = costs["startup_seconds"]
    seconds: dict[str, float] = {}
    jobs = grid.compute_jobs(config)
    for path in jobs["pretrain_extractor"]:
        _, _, recipe_name, key = path[: -len(".pt")].split("/")
        seconds[path] = startup + training(config["recipes"][recipe_name], none, pretraining_images(recipe_name, key))
    for path in jobs["train_crafting_model"]:
        _, _, recipe_name, slot, _ = path.split("/")
        defense = none if slot == grid.NO_DEFENSE_SLOT else config["defenses"][slot]
        seconds[path] = startup + training(config["recipes"][recipe_name], defense, facts.num_train)
    for path in jobs["craft_poison"]:
        attack = config["attacks"][path.split("/")[2]]
        seconds[path] = startup + crafting(attack, config["recipes"][attack["recipe"]])
    for path in jobs["train_feature_model"]:
        recipe = grid.recipe_of(config, path.split("/")[2])
        seconds[path] = startup + training(recipe, none, victim_images(recipe))
    for path in jobs["sanitize"]:
        recipe = grid.recipe_of(config, path.split("/")[2])
        seconds[path] = startup + victim_images(recipe) * image_cost(none, costs, scale, 1) / 3
    for path in jobs["train_victim"]:
        _, _, attack, defense, _ = path.split("/")
        recipe = grid.recipe_of(config, attack)
        seconds[path] = startup + training(recipe, config["defenses"][defense], victim_images(recipe))

    # Each experiment's share: the jobs its cells need (a job shared by tables counts in each).
    by_table = {}
    for table, experiment in config["experiments"].items():
        needed = set()
        for attack, defense in grid.experiment_cells(experiment):
            for seed in grid.seeds(config):
                needed |= _upstream(config, attack, defense, seed)
        by_table[table] = {"jobs": len(needed), "seconds": sum(seconds[p] for p in needed)}
    by_rule = {rule: {"jobs": len(paths), "seconds": sum(seconds[p] for p in paths)} for rule, paths in jobs.items()}
    return {
        "by_rule": by_rule,
        "by_table": by_table,
        "total_seconds": sum(seconds.values()),
        "total_jobs": sum(len(p) for p in jobs.values()),
    }


def _upstream(config: dict, attack: str, defense: str, seed) -> set[str]:
    """The compute jobs (named by output) one victim needs."""
    slot = grid.crafting_slot(config, attack, defense)
    files = {grid.victim_path(attack, defense, seed), grid.poison_path(config, attack, defense, seed)}
    model = grid.crafting_model_path(config, attack, slot, seed)
    files |= {
        p for p in (model, grid.extractor_path(config, attack), grid.sanitized_path(config, attack, defense, seed)) if p
    }
    if grid.sanitized_path(config, attack, defense, seed):
        files.add(grid.feature_model_path(config, attack, defense, seed))
    return files


def forest_trainings(config: dict) -> int:
    """The grid's training jobs (victims, crafting and feature models), priced at Geiping et al.'s
    ``FOREST_MINUTES_PER_TRAINING`` each for the README's comparison."""
    jobs = grid.compute_jobs(config)
    return sum(len(jobs[r]) for r in ("train_victim", "train_crafting_model", "train_feature_model"))


def report(path: str, costs_path: str | None) -> str:
    config = grid.load(path)
    cpu = config["runtime"]["device"] == "cpu"
    costs = load_costs(costs_path, cpu)
    scale = flops_per_image(config["model"], sources.facts(config["data"]).image_shape) / flops_per_image(
        costs["model"], costs["shape"]
    )
    result = estimate(config, costs, scale)
    unit, per = ("CPU minutes", 60) if cpu else ("GPU-hours", 3600)
    lines = [
        f"# Estimate for {path}",
        "",
        f"Costs: {costs['source']}; the config's model costs {scale:.3g}x the "
        f"measured one per image (model FLOPs); {costs['startup_seconds']:g} s start-up per job.",
        "",
        f"| rule | jobs | {unit} |",
        "|---|---|---|",
    ]
    for rule, row in result["by_rule"].items():
        lines.append(f"| {rule} | {row['jobs']} | {row['seconds'] / per:.1f} |")
    lines += [
        f"| **all compute jobs** | {result['total_jobs']} | **{result['total_seconds'] / per:.1f}** |",
        "",
        f"| experiment | jobs it needs | {unit} |",
        "|---|---|---|",
    ]
    for table, row in result["by_table"].items():
        lines.append(f"| {table} | {row['jobs']} | {row['seconds'] / per:.1f} |")
    if not cpu:
        trainings = forest_trainings(config)
        forest = trainings * FOREST_MINUTES_PER_TRAINING * 60
        lines += [
            "",
            f"The same grid's {trainings} trainings at Geiping et al.'s {FOREST_MINUTES_PER_TRAINING} min each: "
            f"{forest / 3600:.0f} GPU-hours ({result['total_seconds'] / forest:.2f}x that here).",
        ]
    lines.append("")
    if cpu:
        lines.append("Serial time; `--cores N` runs N single-thread jobs at once on N cores.")
    else:
        lines.append("One GPU's time; N GPUs (`--resources gpu=N`) divide it by about N.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m augdefense.estimate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="config.yaml")
    parser.add_argument("--costs", help="a gpucheck.json with measured per-image costs")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from augdefense.errors import ConfigError

    try:
        print(report(args.config, args.costs), end="")
    except ConfigError as err:
        print(f"augdefense.estimate: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
