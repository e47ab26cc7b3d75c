"""AdapterFusion (Pfeiffer et al. 2021): learned attention over adapters.

At each site where two or more of the fused bottleneck adapters sit, a
`FusionLayer` takes the site's output `y` and what each adapter would add to
it (`r_i = up_i(act(down_i(y)))`), and returns
`y + sum_i softmax_i((y Wq) . (r_i Wk)) (r_i Wv)`. `Wv` starts as the identity
and `Wq`, `Wk` near zero, so a new fusion starts as the plain average of its
adapters; training moves only the fusion layers and the fusion's own head.
"""

import dataclasses

import keras
from keras import ops


@dataclasses.dataclass
class FusionConfig:
    """Hyperparameters of an AdapterFusion.

    Args:
        attention_dropout: dropout on the attention scores (AdapterHub: 0.1).
        temperature: divides the scores before the softmax.
        learning_rate: default peak learning rate for `train_adapter_fusion`.
    """

    attention_dropout: float = 0.1
    temperature: float = 1.0
    learning_rate: float = 1e-3

    def __post_init__(self):
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"FusionConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}.")
        if not self.temperature > 0:
            raise ValueError(f"FusionConfig.temperature must be > 0, got {self.temperature!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"FusionConfig.learning_rate must be > 0, got {self.learning_rate!r}.")

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_adapters")
class FusionLayer(keras.layers.Layer):
    """Attention over adapter residuals at one site (see module docstring).

    Args:
        attention_dropout: dropout on the attention scores.
        temperature: softmax temperature.

    Example:
    ```python
    fusion = FusionLayer()
    fused = fusion(y, residuals)  # y: (B, T, H); residuals: (B, T, N, H)
    ```
    """

    def __init__(self, attention_dropout=0.1, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.attention_dropout = attention_dropout
        self.temperature = temperature
        self.dropout = keras.layers.Dropout(attention_dropout, dtype=self.dtype_policy)

    def build(self, y_shape, residuals_shape=None):
        hidden = int(y_shape[-1])
        small = keras.initializers.TruncatedNormal(stddev=0.02)
        self.query = keras.layers.Dense(hidden, kernel_initializer=small, dtype=self.dtype_policy, name="query")
        self.key = keras.layers.Dense(hidden, kernel_initializer=small, dtype=self.dtype_policy, name="key")
        self.value = keras.layers.Dense(
            hidden, use_bias=False, kernel_initializer="identity", dtype=self.dtype_policy, name="value"
        )
        self.query.build(y_shape)
        self.key.build(y_shape)
        self.value.build(y_shape)

    def attention(self, y, residuals, training=None):
        """(B, T, N) weights of each adapter, per token."""
        scores = ops.einsum("bth,btnh->btn", self.query(y), self.key(residuals))
        scores = self.dropout(scores, training=training)
        return ops.softmax(scores / self.temperature, axis=-1)

    def call(self, y, residuals, training=None):
        probs = self.attention(y, residuals, training=training)
        return ops.add(y, ops.einsum("btn,btnh->bth", probs, self.value(residuals)))

    def compute_output_shape(self, y_shape, residuals_shape=None):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update({"attention_dropout": self.attention_dropout, "temperature": self.temperature})
        return config
