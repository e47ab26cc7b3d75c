"""Baselines that run through the same code path as the adapter methods."""

import dataclasses
from typing import ClassVar

from keras_adapters.methods.base import AdapterConfig


@dataclasses.dataclass
class FullFineTuningConfig(AdapterConfig):
    """Full fine-tuning: every backbone weight trains (no adapter layers)."""

    method: ClassVar[str] = "full"
    freezes_backbone: ClassVar[bool] = False
    default_learning_rate: ClassVar[float] = 3e-5


@dataclasses.dataclass
class HeadOnlyConfig(AdapterConfig):
    """Linear probing: the backbone is frozen, only the task head trains."""

    method: ClassVar[str] = "head"
    default_learning_rate: ClassVar[float] = 1e-3
