"""Compacter and Compacter++ (Mahabadi et al. 2021).

Bottleneck adapters whose projections are parameterised hypercomplex
multiplication (PHM) layers: a kernel `W = sum_i A_i (x) B_i` (Kronecker
products), with the `n x n` rule matrices `A_i` shared by every layer of one
adapter (the paper's "shared slow weights") and each layer's `B_i = s_i t_i`
of rank `phm_rank`. Compacter sits where Houlsby adapters do (layer norms
train), Compacter++ only after the feed-forward block, like Pfeiffer's.
"""

import dataclasses
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import Shared
from keras_adapters.methods.base import check_positive_int
from keras_adapters.methods.bottleneck import BottleneckAdapter
from keras_adapters.methods.bottleneck import BottleneckConfig
from keras_adapters.methods.bottleneck import HoulsbyConfig
from keras_adapters.methods.bottleneck import PfeifferConfig


def phm_kernel(rule, left, right):
    """`sum_i kron(rule[i], left[i] @ right[i])`: rule `[n, n, n]`, left
    `[n, p, r]`, right `[n, r, q]` give an `[n * p, n * q]` kernel."""
    n, p, q = rule.shape[0], left.shape[1], right.shape[2]
    factors = ops.einsum("ipr,irq->ipq", left, right)
    return ops.reshape(ops.einsum("iac,ibd->abcd", rule, factors), (n * p, n * q))


@keras.saving.register_keras_serializable(package="keras_adapters")
class CompacterAdapter(BottleneckAdapter):
    """A bottleneck adapter with PHM projections (see the module docstring).

    Args:
        base, bottleneck_size, activation: see `BottleneckAdapter`.
        phm_dim: `n`, the number of Kronecker summands; divides the hidden
            size and the bottleneck size.
        phm_rank: rank of each layer's `B_i`.
        shared: a dict holding the adapter's rule matrices: the first unit
            built creates them (and owns them, for saving), the others use
            them.

    The up-projection's right factors start at zero, so the adapter starts as
    the identity; the rule matrices start at `N(0, 1/n)`, which keeps the
    kernels at the scale of their Glorot-drawn factors.

    Example:
    ```python
    adapter = CompacterAdapter(None, bottleneck_size=12, phm_dim=4, shared=Shared())
    ```
    """

    def __init__(self, base, bottleneck_size, phm_dim=4, phm_rank=1, shared=None, **kwargs):
        super().__init__(base, bottleneck_size, **kwargs)
        self.phm_dim = phm_dim
        self.phm_rank = phm_rank
        object.__setattr__(self, "shared", Shared() if shared is None else shared)

    def build(self, input_shape):
        hidden, n, r = int(input_shape[-1]), self.phm_dim, self.phm_rank
        for size in (hidden, self.bottleneck_size):
            if size % n:
                raise ValueError(f"Compacter's phm_dim {n} must divide the hidden size and bottleneck size ({size}).")
        if "rule" not in self.shared:
            self.rule = self.add_weight(
                name="phm_rule", shape=(n, n, n), initializer=keras.initializers.RandomNormal(stddev=n**-0.5)
            )
            self.shared["rule"] = self.rule
        else:
            object.__setattr__(self, "rule", self.shared["rule"])
        glorot = keras.initializers.GlorotUniform()
        size = self.bottleneck_size
        self.down_left = self.add_weight(name="down_left", shape=(n, hidden // n, r), initializer=glorot)
        self.down_right = self.add_weight(name="down_right", shape=(n, r, size // n), initializer=glorot)
        self.down_bias = self.add_weight(name="down_bias", shape=(size,), initializer="zeros")
        self.up_left = self.add_weight(name="up_left", shape=(n, size // n, r), initializer=glorot)
        self.up_right = self.add_weight(name="up_right", shape=(n, r, hidden // n), initializer="zeros")
        self.up_bias = self.add_weight(name="up_bias", shape=(hidden,), initializer="zeros")

    def projections(self):
        rule = ops.cast(self.rule, "float32")
        down = phm_kernel(rule, ops.cast(self.down_left, "float32"), ops.cast(self.down_right, "float32"))
        up = phm_kernel(rule, ops.cast(self.up_left, "float32"), ops.cast(self.up_right, "float32"))
        return down, self.down_bias, up, self.up_bias

    def residual(self, y):
        down, down_bias, up, up_bias = (ops.cast(t, y.dtype) for t in self.projections())
        h = self.activation(ops.add(ops.matmul(y, down), down_bias))
        return ops.add(ops.matmul(h, up), up_bias)

    def get_config(self):
        return {**super().get_config(), "phm_dim": self.phm_dim, "phm_rank": self.phm_rank}


@dataclasses.dataclass
class CompacterConfig(BottleneckConfig):
    """Compacter: PHM bottlenecks where Houlsby adapters sit (AdapterHub's
    `CompacterConfig`: reduction factor 32, GELU, `phm_dim` 4, rank 1).

    Args:
        phm_dim: the number of Kronecker summands `n`.
        phm_rank: rank of each layer's factors.
        reduction_factor, bottleneck_size, activation, target_layers: see
            `BottleneckConfig` (`init` is fixed: identity at the start).

    Example:
    ```python
    CompacterConfig(phm_dim=8)
    ```
    """

    method: ClassVar[str] = "compacter"
    default_sites: ClassVar[tuple] = HoulsbyConfig.default_sites
    trainable_sites: ClassVar[tuple] = HoulsbyConfig.trainable_sites
    default_learning_rate: ClassVar[float] = 3e-3

    reduction_factor: int = 32
    activation: str = "gelu"
    phm_dim: int = 4
    phm_rank: int = 1

    def validate(self):
        super().validate()
        name = type(self).__name__
        check_positive_int(name, "phm_dim", self.phm_dim)
        check_positive_int(name, "phm_rank", self.phm_rank)

    def size_for(self, hidden_dim):
        # Rounded down to a multiple of phm_dim (the Kronecker blocks must tile it).
        size = super().size_for(hidden_dim)
        return max(self.phm_dim, size - size % self.phm_dim)

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        return CompacterAdapter(
            base, self.size_for(hidden_dim), phm_dim=self.phm_dim, phm_rank=self.phm_rank, shared=shared,
            activation=self.activation, dtype=dtype, name=site.replace("dropout", "adapter"),
        )


@dataclasses.dataclass
class CompacterPlusPlusConfig(CompacterConfig):
    """Compacter++: one PHM bottleneck after each feed-forward block, the
    backbone (layer norms included) frozen."""

    method: ClassVar[str] = "compacter++"
    default_sites: ClassVar[tuple] = PfeifferConfig.default_sites
    trainable_sites: ClassVar[tuple] = ()
