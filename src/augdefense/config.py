"""Config checks beyond the JSON schema, and the experiment grid. Torch-free: the Snakefile imports it.

The JSON schema (workflow/schemas/config.schema.yaml, generated from the registries' ``Param``
tables by ``augdefense.schema``) checks keys, types and ranges and fills every default; this module
checks what a schema cannot: names that must refer to defined entries, cells that cannot work, and
attacks asking for more poisons than the dataset's classes hold (from ``sources.facts``, before any
job runs). Every function here reads a validated config, defaults filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from augdefense.errors import ConfigError

# The schema the workflow validates its config with (generated: `make schema`).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# Crafting-model slot for poisons that do not depend on the victim's defense.
NO_DEFENSE_SLOT = "none"
# Defense types that filter the training set (a sanitize step runs before their victim); a test
# checks this against the registry's FilterDefense classes.
FILTER_TYPES = frozenset({"spectral_signatures", "activation_clustering", "deep_knn"})
# Crafting models train with seed + this offset: the victim of seed s is a fresh initialisation,
# not the model the poisons were crafted on (Geiping et al. retrain the victim from scratch).
CRAFTING_SEED_OFFSET = 1_000_000
# Attack types whose crafting optimises against a trained model (a crafting-model rule runs first);
# a test checks this against the registry.
MODEL_ATTACK_TYPES = frozenset(
    {"gradient_matching", "feature_collision", "convex_polytope", "hidden_trigger", "clean_label_backdoor"}
)
# Attack types whose crafting reads the crafting model's classifier over the victim's classes, which an
# extractor pretrained on another dataset lacks (they name a `crafting_recipe` then).
LOGIT_ATTACK_TYPES = frozenset({"clean_label_backdoor"})
# Attack types that take `n_poisons` images of one class (the attacker's, the target's or the source's).
COUNTED_ATTACK_TYPES = frozenset({"feature_collision", "convex_polytope", "hidden_trigger", "clean_label_backdoor"})


def load(path: str | Path, overrides: dict | None = None, facts=None) -> dict:
    """A config file validated as the Snakefile validates it (the schema, defaults filled, then
    ``check_config``): for tools that read a config outside Snakemake."""
    import yaml
    from snakemake.utils import validate

    with open(path) as fh:
        config = yaml.safe_load(fh)
    config.update(overrides or {})
    try:
        validate(config, str(SCHEMA_PATH))
    except Exception as exc:  # snakemake's WorkflowError wraps jsonschema's message
        raise ConfigError(f"{path}: {exc}") from None
    check_config(config, facts)
    return config


def crafting_seed(seed: int) -> int:
    return seed + CRAFTING_SEED_OFFSET


def needs_crafting_model(attack: dict) -> bool:
    return attack["type"] in MODEL_ATTACK_TYPES and not attack.get("control", False)


def budget_count(budget: float, n_train: int) -> int:
    """Gradient matching's number of poisons: a share of the whole training set."""
    return int(round(budget * n_train))


def patched_count(fraction: float, class_size: int) -> int:
    """The patch backdoor's number of poisons: a share of the target class."""
    return int(round(fraction * class_size))


def assumed_poisons(attack: dict, n_train: int, num_classes: int) -> int:
    """How many poisons a filter's defender assumes in a training set of ``n_train`` images: the
    attack's budget, whether or not this run (a clean control) placed them, and not where (the
    patch backdoor's share of one class is taken of an average class)."""
    if attack["type"] == "gradient_matching":
        return budget_count(attack["budget"], n_train)
    if attack["type"] in COUNTED_ATTACK_TYPES:
        return attack["n_poisons"]
    return patched_count(attack["fraction"], n_train / num_classes)


def seeds(config: dict) -> list[int]:
    value = config["seeds"]
    return list(range(value)) if isinstance(value, int) else list(value)


def check_config(config: dict, facts=None) -> None:
    """Raise ConfigError naming the first key that refers to something undefined, pairs cells that
    cannot work, or asks for more than the dataset holds (``facts``: ``sources.facts`` of the data
    entry, computed when not given)."""
    from augdefense import sources

    attacks, recipes = config["attacks"], config["recipes"]
    for name in list(attacks) + list(config["defenses"]):
        if "/" in name or name.startswith("."):
            raise ConfigError(
                f"'{name}': attack and defense names become directory names; use letters, digits, '_' and '-'"
            )
    for name, attack in attacks.items():
        _defined(f"attacks.{name}.recipe", attack["recipe"], recipes, "recipes")
    for name, recipe in recipes.items():
        _check_transfer(name, recipe.get("transfer", {}), recipes)
    for table, experiment in config["experiments"].items():
        _check_experiment(table, experiment, config)
    check_datasets(config)
    for name, attack in attacks.items():
        _check_crafting(name, attack, recipes)
    for table, experiment in config["experiments"].items():
        check_claims(table, experiment)
        _check_cells(table, experiment, config)
    facts = sources.facts(config["data"]) if facts is None else facts
    sources.check_fits(config["data"], facts)
    for name in sorted({a for a, _ in cells(config)}):
        check_feasible(name, attacks[name], recipes[attacks[name]["recipe"]], facts)


def _defined(where: str, name: str, section: dict, section_name: str) -> None:
    if name not in section:
        raise ConfigError(f"{where}: '{name}' is not defined under '{section_name}' (defined: {sorted(section)})")


def _plain_recipe(where: str, name: str | None, recipes: dict) -> None:
    """A recipe that another names as its extractor's or crafting model's must train from scratch."""
    if name is not None and (name not in recipes or "transfer" in recipes[name]):
        raise ConfigError(f"{where}: '{name}' must name a recipe without 'transfer' (defined: {sorted(recipes)})")


def _check_transfer(name: str, transfer: dict, recipes: dict) -> None:
    """A transfer block gives its normalisation's mean and std together, and pretrains on a plain recipe."""
    if ("mean" in transfer) != ("std" in transfer) or len(transfer.get("mean", ())) != len(transfer.get("std", ())):
        raise ConfigError(
            f"recipes.{name}.transfer.mean, recipes.{name}.transfer.std: give both, one value per channel, or neither"
        )
    _plain_recipe(f"recipes.{name}.transfer.pretrain_recipe", transfer.get("pretrain_recipe"), recipes)


def _check_experiment(table: str, experiment: dict, config: dict) -> None:
    """An experiment names defined attacks, defenses and control, and excludes only its own cells."""
    for pair in experiment.get("exclude", []):
        if pair.get("attack") not in experiment["attacks"] or pair.get("defense") not in experiment["defenses"]:
            raise ConfigError(
                f"experiments.{table}.exclude: {pair} does not name one of the experiment's "
                "attacks and one of its defenses"
            )
    for name in experiment["attacks"] + ([experiment["control"]] if "control" in experiment else []):
        _defined(f"experiments.{table}.attacks", name, config["attacks"], "attacks")
    for name in experiment["defenses"]:
        _defined(f"experiments.{table}.defenses", name, config["defenses"], "defenses")


def _check_crafting(name: str, attack: dict, recipes: dict) -> None:
    """An attack's crafting model can be trained: a plain ``crafting_recipe``, one where the
    attack needs the victim's classifier and the extractor lacks it, and no adaptive transfer."""
    transfer = recipes[attack["recipe"]].get("transfer")
    crafting = attack.get("crafting_recipe")
    _plain_recipe(f"attacks.{name}.crafting_recipe", crafting, recipes)
    if (
        attack["type"] in LOGIT_ATTACK_TYPES
        and transfer is not None
        and transfer.get("pretrain_data") is not None
        and crafting is None
        and not attack.get("control", False)
    ):
        raise ConfigError(
            f"attacks.{name}.crafting_recipe: required: its crafting needs a classifier over the victim's "
            f"classes, and recipe '{attack['recipe']}' pretrains its extractor on another dataset"
        )
    if attack.get("adaptive", False) and transfer is not None:
        raise ConfigError(
            f"attacks.{name}.adaptive: adaptive crafting trains a model under the victim's "
            "defense; a transfer recipe crafts against the shared pretrained extractor"
        )


def _check_cells(table: str, experiment: dict, config: dict) -> None:
    """The control poisons nothing, and every cell's defense applies to its attack."""
    attacks, defenses = config["attacks"], config["defenses"]
    control = experiment.get("control")
    if control is not None and not attacks[control].get("control", False):
        raise ConfigError(f"experiments.{table}.control: attack '{control}' poisons; a control needs 'control: true'")
    for attack, defense in experiment_cells(experiment):
        reason = filter_inapplicable(attacks[attack], defenses[defense])
        if reason:
            raise ConfigError(
                f"experiments.{table}: defense '{defense}' cannot apply to attack '{attack}': "
                f"{reason}; list {{attack: {attack}, defense: {defense}}} under "
                f"experiments.{table}.exclude"
            )


def check_claims(table: str, experiment: dict) -> None:
    """A claim compares cells its experiment runs, and names a margin where (only where) it needs one."""
    from augdefense.claims import check_claim

    cells = set(experiment_cells(experiment))
    for i, claim in enumerate(experiment.get("claims", [])):
        check_claim(claim, f"experiments.{table}.claims[{i}]")
        baselines = claim["baseline"] if isinstance(claim["baseline"], list) else [claim["baseline"]]
        needed = [(claim["attack"], claim["defense"])]
        needed += [(claim.get("baseline_attack", claim["attack"]), b) for b in baselines]
        if claim.get("metric") == "goal_margin_shift":
            if "control" not in experiment:
                raise ConfigError(
                    f"experiments.{table}.claims[{i}].metric: goal_margin_shift compares with the clean control; "
                    "the experiment has no 'control'"
                )
            needed += [(experiment["control"], d) for d in [claim["defense"], *baselines]]
        missing = [f"{a} / {d}" for a, d in needed if (a, d) not in cells]
        if missing:
            raise ConfigError(
                f"experiments.{table}.claims[{i}]: cell(s) {missing} are not among the experiment's "
                "cells (its attacks and control x its defenses, less its exclusions)"
            )


def check_feasible(name: str, attack: dict, recipe: dict, facts) -> None:
    """Refuse an attack that cannot be drawn on this dataset whatever the seed: a trigger larger
    than the images, or more poisons than the smallest class of the split it poisons holds (each
    seed draws its classes at random)."""
    from augdefense import sources

    _, h, w = facts.image_shape
    if attack.get("patch_size", 0) > min(h, w):
        raise ConfigError(f"attacks.{name}.patch_size: {attack['patch_size']} exceeds the {h}x{w} images")
    sizes = facts.train_class_sizes
    if "transfer" in recipe:  # the poisons live in the fine-tuning set
        sizes = sources.finetune_class_sizes(sizes, recipe["transfer"])
    smallest, where = min(sizes), "the fine-tuning set" if "transfer" in recipe else "the training set"
    if attack.get("control", False):
        return
    if attack["type"] == "gradient_matching":
        n = budget_count(attack["budget"], sum(sizes))
        if n < 1:
            raise ConfigError(
                f"attacks.{name}.budget: {attack['budget']} x {sum(sizes)} training images rounds to no poison at all"
            )
        if n > smallest:
            raise ConfigError(
                f"attacks.{name}.budget: {attack['budget']} x {sum(sizes)} = {n} poisons of one "
                f"class, but the smallest class of {where} has {smallest} images (the intended "
                "class is drawn at random per seed)"
            )
    elif attack["type"] in COUNTED_ATTACK_TYPES and attack["n_poisons"] > smallest:
        raise ConfigError(
            f"attacks.{name}.n_poisons: {attack['n_poisons']} poisons of one class, but the "
            f"smallest class of {where} has {smallest} images (classes are drawn at random per seed)"
        )
    elif attack["type"] == "patch" and patched_count(attack["fraction"], smallest) < 1:
        raise ConfigError(
            f"attacks.{name}.fraction: {attack['fraction']} of the smallest class ({smallest} "
            "images) rounds to no poison at all"
        )


def is_filter(spec: dict) -> bool:
    return spec["type"] in FILTER_TYPES


def filter_inapplicable(attack: dict, defense: dict) -> str | None:
    """Why a filter defense cannot apply to an attack, or None when it can."""
    if is_filter(defense) and attack["type"] == "patch" and attack["fraction"] >= 1.0:
        return "every training image of the target class is poisoned, so no clean image is left to tell apart"
    if is_filter(defense) and attack.get("adaptive", False):
        return "an adaptive attack crafts against the victim's training-time defense, and a filter has none"
    return None


def experiment_cells(experiment: dict) -> list[tuple[str, str]]:
    """The experiment's (attack, defense) cells; its ``control`` attack (a clean control: same draw,
    no poisons) runs under every defense, so each poisoned victim has a same-seed clean twin."""
    excluded = {(p["attack"], p["defense"]) for p in experiment.get("exclude", [])}
    cells = [(a, d) for a in experiment["attacks"] for d in experiment["defenses"] if (a, d) not in excluded]
    if "control" in experiment:
        cells += [
            (experiment["control"], d)
            for d in experiment["defenses"]
            if any((a, d) in cells for a in experiment["attacks"])
        ]
    return cells


def cells(config: dict) -> list[tuple[str, str]]:
    """The (attack, defense) pairs of all experiments; a pair shared by two tables appears once."""
    seen: dict[tuple[str, str], None] = {}
    for experiment in config["experiments"].values():
        for cell in experiment_cells(experiment):
            seen[cell] = None
    return list(seen)


def victim_runs(config: dict) -> list[tuple[str, str, int]]:
    return [(a, d, s) for a, d in cells(config) for s in seeds(config)]


def crafting_slot(config: dict, attack: str, defense: str) -> str:
    """Adaptive poisons are crafted against the victim's defense; the others once, against none."""
    return defense if config["attacks"][attack].get("adaptive", False) else NO_DEFENSE_SLOT


# -- the workflow's files: the rules' paths, written once (the Snakefile and the estimate use them) --------------


def recipe_of(config: dict, attack: str) -> dict:
    return config["recipes"][config["attacks"][attack]["recipe"]]


def pretraining_key(transfer: dict) -> str:
    """An extractor's file name under results/extractors/<pretrain recipe>/: ``share<s>`` for the
    offline fallback (a share of the victim's training set), ``data-<dataset>`` for its own dataset."""
    from augdefense import sources

    data = transfer.get("pretrain_data")
    return f"share{transfer['pretrain_share']!r}" if data is None else f"data-{sources.dataset_name(data)}"


def pretraining(config: dict, recipe: str, key: str) -> dict:
    """What the extractor named (``recipe``, ``key``) pretrains on: ``{"pretrain_share": s}`` or
    ``{"pretrain_data": spec}`` (the slice of a transfer entry the pretraining job depends on)."""
    for entry in config["recipes"].values():
        transfer = entry.get("transfer")
        if transfer and transfer["pretrain_recipe"] == recipe and pretraining_key(transfer) == key:
            if transfer.get("pretrain_data") is None:
                return {"pretrain_share": transfer["pretrain_share"]}
            return {"pretrain_data": transfer["pretrain_data"]}
    raise ConfigError(f"results/extractors/{recipe}/{key}.pt: no transfer recipe pretrains this extractor")


def extractor_path(config: dict, attack: str) -> str | None:
    """A transfer recipe's pretrained feature extractor: one per (pretraining recipe, what it pretrains
    on), shared by every seed and by every transfer recipe that pretrains alike (last-layer and
    end-to-end fine-tuning)."""
    transfer = recipe_of(config, attack).get("transfer")
    if transfer is None:
        return None
    return f"results/extractors/{transfer['pretrain_recipe']}/{pretraining_key(transfer)}.pt"


def prepared_data_path(spec: dict) -> str:
    from augdefense import sources

    return f"resources/prepared/{sources.dataset_name(spec)}.pt"


def datasets(config: dict) -> dict[str, dict]:
    """Every dataset the workflow prepares, by name: the victims' and the extractors' own."""
    from augdefense import sources

    found = {sources.dataset_name(config["data"]): config["data"]}
    for entry in config["recipes"].values():
        data = entry.get("transfer", {}).get("pretrain_data")
        if data is not None:
            found.setdefault(sources.dataset_name(data), data)
    return found


def check_datasets(config: dict) -> None:
    """Two data entries that would share a prepared file must be the same entry."""
    from augdefense import sources

    entries = [("data", config["data"])] + [
        (f"recipes.{name}.transfer.pretrain_data", entry["transfer"]["pretrain_data"])
        for name, entry in config["recipes"].items()
        if entry.get("transfer", {}).get("pretrain_data") is not None
    ]
    first: dict[str, tuple[str, dict]] = {}
    for where, spec in entries:
        name = sources.dataset_name(spec)
        if name in first and canonical(first[name][1]) != canonical(spec):
            raise ConfigError(
                f"{where}: differs from {first[name][0]} but would be prepared under the same name "
                f"'{name}'; give one an image_size of its own or make them equal"
            )
        first.setdefault(name, (where, spec))


def crafting_model_path(config: dict, attack: str, slot: str, seed) -> str | None:
    """The model an optimisation-based attack crafts against: a clean-trained model shared by every
    attack with the same recipe (and, when adaptive, the same defense); in the transfer setting, the
    pretrained extractor, unless the attack names a ``crafting_recipe`` (a model trained with it on
    the victim's training set); none for the patch attack and the controls."""
    spec = config["attacks"][attack]
    if not needs_crafting_model(spec):
        return None
    if spec.get("crafting_recipe") is not None:
        return f"results/crafting_models/{spec['crafting_recipe']}/{slot}/{seed}.pt"
    return extractor_path(config, attack) or f"results/crafting_models/{spec['recipe']}/{slot}/{seed}.pt"


def poison_path(config: dict, attack: str, defense: str, seed) -> str:
    return f"results/poisons/{attack}/{crafting_slot(config, attack, defense)}/{seed}.pt"


def sanitized_path(config: dict, attack: str, defense: str, seed) -> str | None:
    """Filter defenses train on what their sanitize step kept; other defenses need no such input."""
    return f"results/sanitize/{attack}/{defense}/{seed}.json" if is_filter(config["defenses"][defense]) else None


def feature_model_path(config: dict, attack: str, defense: str, seed) -> str:
    return f"results/feature_models/{attack}/{crafting_slot(config, attack, defense)}/{seed}.pt"


def victim_path(attack: str, defense: str, seed) -> str:
    return f"results/runs/{attack}/{defense}/{seed}.json"


def compute_jobs(config: dict) -> dict[str, list[str]]:
    """The compute jobs the workflow runs for ``config``, by rule, each named by its output (a file
    shared by several victims is one job)."""
    jobs: dict[str, set[str]] = {
        r: set()
        for r in (
            "pretrain_extractor",
            "train_crafting_model",
            "craft_poison",
            "train_feature_model",
            "sanitize",
            "train_victim",
        )
    }
    for attack, defense, seed in victim_runs(config):
        jobs["train_victim"].add(victim_path(attack, defense, seed))
        jobs["craft_poison"].add(poison_path(config, attack, defense, seed))
        model = crafting_model_path(config, attack, crafting_slot(config, attack, defense), seed)
        if model and model.startswith("results/crafting_models/"):
            jobs["train_crafting_model"].add(model)
        if extractor_path(config, attack):
            jobs["pretrain_extractor"].add(extractor_path(config, attack))
        if sanitized_path(config, attack, defense, seed):
            jobs["sanitize"].add(sanitized_path(config, attack, defense, seed))
            jobs["train_feature_model"].add(feature_model_path(config, attack, defense, seed))
    return {rule: sorted(files) for rule, files in jobs.items()}


def canonical(obj: Any) -> Any:
    """``obj`` with every mapping's keys sorted, recursively: a rule's params hold config slices in
    this form, because Snakemake's params trigger compares repr() and a slice must not rerun jobs
    because its keys were written in another order."""
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj
