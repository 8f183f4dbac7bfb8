"""Defense registry: a config entry ``{type: T, ...}`` is built by the class registered as T."""

from __future__ import annotations

from augdefense.defenses.base import Defense
from augdefense.errors import ConfigError

REGISTRY: dict[str, type[Defense]] = {}


def register(cls: type[Defense]) -> type[Defense]:
    REGISTRY[cls.type_name] = cls
    return cls


def build(spec: dict, num_classes: int, name: str = "", seed: int = 0, data_mean=None) -> Defense:
    """The defense of config entry ``spec``; ``data_mean`` ([C] in [0, 1] units) is the training
    set's mean colour, which a defense that fills with it (forest-style cutout) needs."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in REGISTRY:
        raise ConfigError(f"defenses.{name or '?'}.type: '{kind}' is not one of {sorted(REGISTRY)}")
    defense = REGISTRY[kind](spec, num_classes, name=name, seed=seed)
    defense.bind_data_mean(data_mean)
    return defense


# Importing the implementations registers them.
from augdefense.defenses import dpsgd, filters, mixing  # noqa: E402,F401
