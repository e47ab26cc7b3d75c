"""LoRA: low-rank updates of frozen projections (Hu et al. 2021)."""

import dataclasses
import math
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import RoutedUnits
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import pad_axis
from keras_adapters.methods.base import per_row
from keras_adapters.methods.base import check_sites
from keras_adapters.methods.base import check_positive_int
from keras_adapters.methods.base import kernel_split

#: Sites LoRA may target (all projections of a keras-hub TransformerEncoder).
LORA_SITES = (
    "query",
    "key",
    "value",
    "attention_output",
    "feedforward_intermediate_dense",
    "feedforward_output_dense",
)


class RoutedLoRA(RoutedUnits):
    """Each row's `scaling * x @ A @ B` as two batched matmuls over the
    gathered `A` (`[batch, in, r]`) and `B` (`[batch, r, out]`); ranks are
    zero-padded to the largest, adapters without LoRA here get zeros."""

    def adjust_linear(self, x, y, training=None):
        rank = max(u.rank for u in self.units if u is not None)
        n_in, n_out = (math.prod(s) for s in (self.first._in_shape, self.first._out_shape))

        def a():
            return [pad_axis(u.lora_a, rank, 1) if u is not None else ops.zeros((n_in, rank)) for u in self.units]

        def b():
            return [pad_axis(u.lora_b, rank, 0) if u is not None else ops.zeros((rank, n_out)) for u in self.units]

        scaling = self.rows([u.scaling if u is not None else 0.0 for u in self.units], y.dtype, "scaling")
        # [batch, sequence, in]; no -1, which an empty batch cannot infer.
        flat = ops.reshape(x, (*ops.shape(x)[:2], n_in))
        delta = ops.einsum("bsi,bir->bsr", flat, self.rows(a, x.dtype, "lora_a"))
        delta = ops.einsum("bsr,bro->bso", delta, self.rows(b, x.dtype, "lora_b"))
        delta = ops.reshape(delta, ops.shape(y))
        return ops.add(y, ops.multiply(delta, per_row(scaling, delta)))


@keras.saving.register_keras_serializable(package="keras_adapters")
class LoRALayer(WrappedLayer):
    """`base(x) + (alpha / rank) * dropout(x) @ A @ B`, base frozen.

    The update spans the whole projection (all heads at once for attention),
    with `A` of shape `(in_features, rank)` drawn zero-mean and `B` of shape
    `(rank, out_features)` at zero, so the layer starts as `base`. `A` and
    `B` are the transposes of peft's `lora_A.weight` and `lora_B.weight`
    (output features in row-major order of the kernel's output dims, which is
    how keras-hub lays out Hugging Face heads).

    Args:
        base: the `Dense` or `EinsumDense` projection to adapt.
        rank: int, the rank of the update.
        alpha: float, scaling numerator; the update is scaled by
            `alpha / rank`.
        dropout: float, dropout on the update's input.

    Example:
    ```python
    dense = keras.layers.Dense(16); dense.build((None, 8))
    lora = LoRALayer(dense, rank=4, alpha=8); lora.build((None, 8))
    lora(x)  # equals dense(x) until B is trained
    ```
    """

    mergeable = True
    routed = RoutedLoRA

    def __init__(self, base, rank, alpha, dropout=0.0, **kwargs):
        super().__init__(base, **kwargs)
        self.rank = rank
        self.alpha = alpha
        self.dropout_rate = dropout
        self.scaling = alpha / rank
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self._in_shape, self._out_shape = kernel_split(self.base)
        in_features = math.prod(self._in_shape)
        out_features = math.prod(self._out_shape)
        # peft's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        a_init = keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
        )
        self.lora_a = self.add_weight(
            name="lora_a", shape=(in_features, self.rank), initializer=a_init
        )
        self.lora_b = self.add_weight(
            name="lora_b", shape=(self.rank, out_features), initializer="zeros"
        )

    def _delta(self, inputs, training):
        x = self.dropout(inputs, training=training)
        n_in = len(self._in_shape)
        if n_in > 1:
            lead = ops.shape(x)[:-n_in]
            x = ops.reshape(x, (*lead, math.prod(self._in_shape)))
        delta = ops.matmul(ops.matmul(x, self.lora_a), self.lora_b)
        delta = ops.multiply(delta, ops.cast(self.scaling, delta.dtype))
        if len(self._out_shape) > 1:
            lead = ops.shape(delta)[:-1]
            delta = ops.reshape(delta, (*lead, *self._out_shape))
        return delta

    def adjust_linear(self, x, y, training=None):
        return ops.add(y, self._delta(x, training))

    def delta_kernel(self):
        """The update as a kernel shaped like `base.kernel` (float32)."""
        delta = ops.matmul(self.lora_a, self.lora_b) * self.scaling
        return ops.reshape(delta, tuple(self.base.kernel.shape))

    def merge(self):
        kernel = self.base.kernel
        kernel.assign(ops.cast(kernel, "float32") + self.delta_kernel())

    def get_config(self):
        config = super().get_config()
        config.update(
            {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout_rate}
        )
        return config


@dataclasses.dataclass
class LoRAConfig(AdapterConfig):
    """LoRA on chosen projections of every encoder layer.

    Args:
        rank: rank of the update.
        alpha: the update is scaled by `alpha / rank` (peft's `lora_alpha`).
        dropout: dropout on the update's input (peft's `lora_dropout`).
        target_modules: site names, from `query`, `key`, `value`,
            `attention_output`, `feedforward_intermediate_dense`,
            `feedforward_output_dense`.
        target_layers: see `AdapterConfig`.

    Example:
    ```python
    LoRAConfig(rank=8, alpha=16, target_modules=("query", "key", "value"))
    ```
    """

    method: ClassVar[str] = "lora"
    # Higher than the LoRA paper's 4e-4..5e-4 (tuned for 30+ epochs): the
    # recipe here is a few epochs with warm-up and linear decay.
    default_learning_rate: ClassVar[float] = 1e-3

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple = ("query", "value")

    def validate(self):
        super().validate()
        check_positive_int("LoRAConfig", "rank", self.rank)
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"LoRAConfig.alpha must be > 0, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}."
            )
        self.target_modules = check_sites(
            "LoRAConfig", "target_modules", self.target_modules, LORA_SITES
        )

    def sites(self):
        return self.target_modules

    def wrap(self, site, base, *, dtype, hidden_dim):
        return LoRALayer(
            base,
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            dtype=dtype,
            name=base.name,
        )
