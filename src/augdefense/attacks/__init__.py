"""Attack registry: a config entry ``{type: T, ...}`` is built by the class registered as T. Every
attack writes the poison artifact described in ``augdefense.poisons``."""

from __future__ import annotations

from augdefense.attacks.base import Attack
from augdefense.errors import ConfigError

REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    REGISTRY[cls.type_name] = cls
    return cls


def build(spec: dict, name: str = "") -> Attack:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in REGISTRY:
        raise ConfigError(f"attacks.{name or '?'}.type: '{kind}' is not one of {sorted(REGISTRY)}")
    return REGISTRY[kind](spec, name=name)


from augdefense.attacks import (  # noqa: E402,F401,E501
    clean_label,
    convex_polytope,
    feature_collision,
    gradient_matching,
    hidden_trigger,
    patch,  # noqa: E402,F401  (registers the implementations)
)
