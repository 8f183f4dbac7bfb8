"""Config checks beyond the JSON schema, and the experiment grid. Torch-free: the Snakefile imports it.

The JSON schema (workflow/schemas/config.schema.yaml) checks keys, types and ranges; this module
checks what a schema cannot: names that must refer to defined entries, and the grid of jobs.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from augdefense.errors import ConfigError

# Crafting-model slot for poisons that do not depend on the victim's defense.
NO_DEFENSE_SLOT = "none"
# Defense types that filter the training set (a sanitize step runs before their victim).
FILTER_TYPES = frozenset({"spectral_signatures", "activation_clustering", "deep_knn"})


# Crafting models train with seed + this offset: the victim of seed s is a fresh initialisation,
# not the model the poisons were crafted on (Geiping et al. retrain the victim from scratch).
CRAFTING_SEED_OFFSET = 1_000_000
# Attack types whose crafting optimises against a trained model (a crafting model rule runs first).
MODEL_ATTACK_TYPES = frozenset({"gradient_matching", "feature_collision", "convex_polytope", "hidden_trigger",
                                "clean_label_backdoor"})


# The share of each class that pretrains a transfer recipe's extractor when the recipe does not say.
DEFAULT_PRETRAIN_SHARE = 0.5


def pretrain_share(transfer: dict) -> float:
    """A recipe's ``transfer`` block's pretraining share (the rest is the fine-tuning split)."""
    return float(transfer.get("pretrain_share", DEFAULT_PRETRAIN_SHARE))


def crafting_seed(seed: int) -> int:
    return seed + CRAFTING_SEED_OFFSET


def needs_crafting_model(attack: dict) -> bool:
    return attack.get("type") in MODEL_ATTACK_TYPES and not attack.get("control", False)


def seeds(config: dict) -> list[int]:
    value = config["seeds"]
    return list(range(value)) if isinstance(value, int) else list(value)


def check_config(config: dict) -> None:
    """Raise ConfigError naming the first key that refers to something undefined."""
    attacks, defenses, recipes = config["attacks"], config["defenses"], config["recipes"]
    for name, attack in attacks.items():
        if attack["recipe"] not in recipes:
            raise ConfigError(
                f"attacks.{name}.recipe: '{attack['recipe']}' is not defined under 'recipes' "
                f"(defined: {sorted(recipes)})"
            )
    for table, experiment in config["experiments"].items():
        for pair in experiment.get("exclude", []):
            if pair.get("attack") not in experiment["attacks"] or pair.get("defense") not in experiment["defenses"]:
                raise ConfigError(f"experiments.{table}.exclude: {pair} does not name one of the experiment's "
                                  "attacks and one of its defenses")
        for name in experiment["attacks"] + ([experiment["control"]] if "control" in experiment else []):
            if name not in attacks:
                raise ConfigError(
                    f"experiments.{table}.attacks: '{name}' is not defined under 'attacks' "
                    f"(defined: {sorted(attacks)})"
                )
        for name in experiment["defenses"]:
            if name not in defenses:
                raise ConfigError(
                    f"experiments.{table}.defenses: '{name}' is not defined under 'defenses' "
                    f"(defined: {sorted(defenses)})"
                )
    for name, recipe in recipes.items():
        pretrain = recipe.get("transfer", {}).get("pretrain_recipe")
        if pretrain is not None and (pretrain not in recipes or "transfer" in recipes[pretrain]):
            raise ConfigError(f"recipes.{name}.transfer.pretrain_recipe: '{pretrain}' must name a recipe without "
                              f"'transfer' (defined: {sorted(recipes)})")
    for name, attack in attacks.items():
        if attack.get("adaptive", False) and "transfer" in recipes[attack["recipe"]]:
            raise ConfigError(f"attacks.{name}.adaptive: adaptive crafting trains a model under the victim's "
                              "defense; a transfer recipe crafts against the shared pretrained extractor")
    for table, experiment in config["experiments"].items():
        control = experiment.get("control")
        if control is not None and not attacks[control].get("control", False):
            raise ConfigError(f"experiments.{table}.control: attack '{control}' poisons; a control needs "
                              "'control: true'")
        for attack, defense in experiment_cells(experiment):
            reason = filter_inapplicable(attacks[attack], defenses[defense])
            if reason:
                raise ConfigError(f"experiments.{table}: defense '{defense}' cannot apply to attack '{attack}': "
                                  f"{reason}; list {{attack: {attack}, defense: {defense}}} under "
                                  f"experiments.{table}.exclude")
    for name in list(attacks) + list(defenses):
        if "/" in name or name.startswith("."):
            raise ConfigError(f"'{name}': attack and defense names become directory names; "
                              "use letters, digits, '_' and '-'")


def is_filter(spec: dict) -> bool:
    return spec.get("type") in FILTER_TYPES


def filter_inapplicable(attack: dict, defense: dict) -> str | None:
    """Why a filter defense cannot apply to an attack, or None when it can."""
    if is_filter(defense) and attack.get("type") == "patch" and attack.get("fraction", 0.1) >= 1.0:
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
        cells += [(experiment["control"], d) for d in experiment["defenses"]
                  if any((a, d) in cells for a in experiment["attacks"])]
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


def as_json(obj: Any) -> str:
    """Canonical JSON: Snakemake's params trigger compares repr(), so the text must be stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{what}: not valid JSON ({exc})") from None


def require_keys(spec: dict, allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def check_params(spec: dict, params: dict[str, tuple], where: str) -> None:
    """Check a registry entry against its table ``key -> (types, check, rule)``; name the key at fault."""
    unknown = sorted(set(spec) - {"type", *params})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for type '{spec.get('type')}'; "
                          f"allowed: {sorted({'type', *params})}")
    for key, (kinds, ok, rule) in params.items():
        if key not in spec:
            continue
        value = spec[key]
        wrong_type = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds))
        if wrong_type or not ok(value):
            raise ConfigError(f"{where}.{key}: {value!r} is invalid; must be {rule}")


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)
