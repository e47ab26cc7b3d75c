"""Mix-and-match adapters (He et al. 2022): prefix tuning in the attention
plus a scaled parallel adapter beside the feed-forward block (AdapterHub's
`MAMConfig`: prefixes through an MLP of width 800, parallel bottleneck
`hidden // 2`, scaling 4)."""

import dataclasses
from typing import ClassVar

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.parallel import ParallelAdapterConfig
from keras_adapters.methods.prefix import PrefixConfig


@dataclasses.dataclass
class MAMConfig(AdapterConfig):
    """Prefix tuning + scaled parallel adapter, one adapter.

    Args:
        prefix_length, reparameterize: see `PrefixConfig`.
        prefix_bottleneck_size: the prefix MLP's width (`PrefixConfig.bottleneck_size`).
        reduction_factor, bottleneck_size, scaling, activation: the parallel
            adapter's (see `ParallelAdapterConfig`).
        target_layers: see `AdapterConfig`.

    Example:
    ```python
    MAMConfig(prefix_length=30, scaling=4.0)
    ```
    """

    method: ClassVar[str] = "mam"
    changes_sequence: ClassVar[bool] = True
    default_learning_rate: ClassVar[float] = 3e-4  # as for the parallel adapter

    prefix_length: int = 30
    reparameterize: bool = True
    prefix_bottleneck_size: int = 800
    reduction_factor: int = 2
    bottleneck_size: int | None = None
    scaling: float | str = 4.0
    activation: str = "relu"

    def validate(self):
        super().validate()
        self.prefix()  # each part validates its own fields
        self.scaling = self.parallel().scaling

    def prefix(self):
        return PrefixConfig(
            prefix_length=self.prefix_length, reparameterize=self.reparameterize,
            bottleneck_size=self.prefix_bottleneck_size, target_layers=self.target_layers,
        )

    def parallel(self):
        return ParallelAdapterConfig(
            reduction_factor=self.reduction_factor, bottleneck_size=self.bottleneck_size, scaling=self.scaling,
            activation=self.activation, target_layers=self.target_layers,
        )

    def sites(self):
        return self.prefix().sites() + self.parallel().sites()

    def as_saved(self):
        return dataclasses.replace(self, reparameterize=False)

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        part = self.prefix() if site in PrefixConfig.default_sites else self.parallel()
        return part.wrap(site, base, dtype=dtype, hidden_dim=hidden_dim, shared=shared)
