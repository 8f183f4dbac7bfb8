"""The attack interface: an attack crafts a poison artifact (see ``augdefense.attacks``) from the
clean dataset and a seed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from augdefense.config import check_params


class Attack(ABC):
    type_name: ClassVar[str]
    params: ClassVar[dict[str, tuple]] = {}
    common_params: ClassVar[dict[str, tuple]] = {
        "recipe": (str, lambda v: bool(v), "the name of an entry under 'recipes'"),
        "adaptive": (bool, lambda v: True, "true or false"),
    }

    def __init__(self, spec: dict, name: str = "") -> None:
        self.name = name or spec.get("type", "?")
        check_params(spec, {**self.params, **self.common_params}, f"attacks.{self.name}")
        self.spec = dict(spec)

    @abstractmethod
    def craft(self, dataset, seed: int) -> dict:
        """Return the poison artifact as a dict of tensors and plain values."""
