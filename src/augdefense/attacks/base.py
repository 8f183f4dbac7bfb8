"""The attack interface: an attack crafts a poison artifact (see ``augdefense.attacks``) from the
clean dataset, a seed and, for optimisation-based attacks, a trained model (a ``CraftingContext``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from augdefense.config import needs_crafting_model
from augdefense.params import Param, complete


@dataclass
class CraftingContext:
    """What an optimisation-based attack crafts against: a trained model (in eval mode, on
    ``device``), the data's normaliser, and for an adaptive attack the victim's defense (whose
    augmentation and gradient processing the crafting loop then applies). Images are float in [0, 1]."""

    model: torch.nn.Module
    normalizer: torch.nn.Module
    device: torch.device
    defense: object | None = None
    recipe: object | None = None  # the training recipe: crafting mirrors its crop (as a shift) and flip

    def __post_init__(self) -> None:
        self.model.to(memory_format=torch.channels_last)  # as in training: faster convolutions

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer(x).contiguous(memory_format=torch.channels_last)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._input(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (what feature-collision attacks match)."""
        return self.model.features(self._input(x))


class Attack(ABC):
    type_name: ClassVar[str]
    # The type's own config keys; every attack also names the training recipe of its victims.
    params: ClassVar[dict[str, Param]] = {}
    common_params: ClassVar[dict[str, Param]] = {
        "recipe": Param("string", "the name of an entry under 'recipes' (the victims' training recipe)"),
    }

    @classmethod
    def fields(cls) -> dict[str, Param]:
        """Every config key of this type."""
        return {**cls.common_params, **cls.params}

    def __init__(self, spec: dict, name: str = "") -> None:
        self.name = name or spec.get("type", "?")
        self.spec = complete(spec, self.fields(), f"attacks.{self.name}", allowed=("type",))

    @property
    def needs_model(self) -> bool:
        """Whether ``craft`` needs a CraftingContext (a trained model to optimise against)."""
        return needs_crafting_model(self.spec)

    @abstractmethod
    def craft(self, dataset, seed: int, context: CraftingContext | None = None) -> dict:
        """Return the poison artifact as a dict of tensors and plain values."""
