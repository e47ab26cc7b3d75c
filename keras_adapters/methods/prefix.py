"""Prefix tuning (Li & Liang 2021): trainable keys and values in front of
every self-attention's own.

Each encoder layer gets `prefix_length` key vectors and value vectors that
every token attends to (the attention mask is extended to let it). Three
units per layer act together: one at the attention layer (extends the mask),
one at the key projection and one at the value projection (each puts its
prefix in front of the projected sequence).

With `reparameterize=True` (the paper's training recipe, AdapterHub's
default) the prefixes are computed during training by a small MLP,
`dense_i(tanh(dense(E)))` with `E` a `[prefix_length, hidden]` embedding and
the first dense shared by all layers; saving an adapter folder folds the MLP
into the plain prefixes it computes, so the folder holds only those.
"""

import dataclasses
import math
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import InputEndUnit
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import Shared
from keras_adapters.methods.base import check_positive_int
from keras_adapters.methods.base import kernel_split

ATTENTION_SITE = "self_attention"
#: The site of input-end units (`keras_adapters.core.injection.INPUT_SITE`).
INPUT_END_SITE = "embedding_output"


@keras.saving.register_keras_serializable(package="keras_adapters")
class PrefixAttention(WrappedLayer):
    """The prefix's unit at a self-attention layer: lets every token attend
    to the prefix; with the reparameterisation, also computes this layer's
    prefixes.

    Args:
        base: `None` (the unit does not call the attention layer).
        prefix_length: the number of prefix positions.
        reparameterize: compute the prefixes with the MLP (see module).
        hidden_dim, bottleneck_size: the MLP's sizes.
        shared: the adapter's shared dict; the first unit built owns the
            embedding and the first dense layer of the MLP.

    Example:
    ```python
    unit = PrefixAttention(None, prefix_length=10)
    mask = unit.extend_mask(mask)  # [batch, 1, 10 + length]
    ```
    """

    def __init__(self, base, prefix_length, reparameterize=False, hidden_dim=None, bottleneck_size=512,
                 shared=None, **kwargs):
        super().__init__(base, **kwargs)
        self.prefix_length = prefix_length
        self.reparameterize = reparameterize
        self.hidden_dim = hidden_dim
        self.bottleneck_size = bottleneck_size
        object.__setattr__(self, "shared", Shared() if shared is None else shared)

    def build(self, input_shape):
        if not self.reparameterize:
            self.built = True
            return
        if "embedding" not in self.shared:
            self.embedding = self.add_weight(
                name="embedding", shape=(self.prefix_length, self.hidden_dim),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            )
            self.encoder = keras.layers.Dense(
                self.bottleneck_size, activation="tanh", dtype=self.dtype_policy, name="encoder"
            )
            self.encoder.build((self.prefix_length, self.hidden_dim))
            self.shared.update(embedding=self.embedding, encoder=self.encoder)
        self.decoder = keras.layers.Dense(2 * self.hidden_dim, dtype=self.dtype_policy, name="decoder")
        self.decoder.build((self.prefix_length, self.bottleneck_size))

    def reparameterized(self):
        """This layer's prefixes from the MLP, `[prefix_length, 2 * hidden]` (keys, values), float32."""
        embedding = ops.cast(self.shared["embedding"], "float32")
        return ops.cast(self.decoder(self.shared["encoder"](embedding)), "float32")

    def extend_mask(self, mask):
        if mask is None:
            return None
        ones = ops.ones((*ops.shape(mask)[:-1], self.prefix_length), mask.dtype)
        return ops.concatenate([ones, mask], axis=-1)

    def keyed_weights(self, scope):
        return {}  # the MLP is folded into the prefixes when saved

    def get_config(self):
        config = super().get_config()
        config.update(
            prefix_length=self.prefix_length, reparameterize=self.reparameterize, hidden_dim=self.hidden_dim,
            bottleneck_size=self.bottleneck_size,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(None, **config)


@keras.saving.register_keras_serializable(package="keras_adapters")
class PrefixProjection(WrappedLayer):
    """A prefix in front of a key or value projection's output.

    Args:
        base: the key or value projection (its output is `[batch, length,
            heads, head_dim]`).
        prefix_length: the number of prefix positions.
        attention: this layer's `PrefixAttention` with the reparameterisation
            (not tracked), or `None` for a plain trainable prefix.
        half: 0 for keys, 1 for values (which half of the MLP's output).
    """

    def __init__(self, base, prefix_length, attention=None, half=0, **kwargs):
        super().__init__(base, **kwargs)
        self.prefix_length = prefix_length
        self.half = half
        object.__setattr__(self, "attention", attention)

    def build(self, input_shape):
        _, self._out_shape = kernel_split(self.base)
        if self.attention is None:
            self.prefix = self.add_weight(
                name="prefix", shape=(self.prefix_length, *self._out_shape),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            )

    def current(self):
        """The prefix, `[prefix_length, heads, head_dim]`, float32."""
        if self.attention is None:
            return ops.cast(self.prefix, "float32")
        size = math.prod(self._out_shape)
        both = self.attention.reparameterized()
        return ops.reshape(both[:, self.half * size : (self.half + 1) * size], (self.prefix_length, *self._out_shape))

    def transform_output(self, y, training=None):
        prefix = ops.cast(self.current(), y.dtype)
        prefix = ops.broadcast_to(ops.expand_dims(prefix, 0), (ops.shape(y)[0], *prefix.shape))
        return ops.concatenate([prefix, y], axis=1)

    def keyed_weights(self, scope):
        if self.attention is None:
            return super().keyed_weights(scope)
        return {"prefix": self.current()}  # folded: what the MLP computes now

    def compute_output_shape(self, input_shape):
        shape = self.base.compute_output_shape(input_shape)
        return (shape[0], None if shape[1] is None else shape[1] + self.prefix_length, *shape[2:])

    def get_config(self):
        return {**super().get_config(), "prefix_length": self.prefix_length, "half": self.half}

    @classmethod
    def from_config(cls, config):
        return cls(None, **config)


@keras.saving.register_keras_serializable(package="keras_adapters")
class CachePrefix(InputEndUnit):
    """A decoder's prefix: keys and values every layer's self-attention reads
    first, written into the front of its KV cache (as peft hands a causal LM
    `past_key_values`); the model puts them there (`keras_adapters.models.decoding`).

    Args:
        base: unused (`None`): the unit sits at the backbone's input end.
        prefix_length: the number of prefix positions.
        num_layers, num_key_value_heads, head_dim: the decoder's cache shape.
        reparameterize, hidden_dim, bottleneck_size: compute the prefixes
            with the MLP `dense(tanh(dense(E)))` (see module docstring).

    Example:
    ```python
    unit = CachePrefix(None, 10, num_layers=30, num_key_value_heads=3, head_dim=64)
    unit.build(None)
    past = unit.past()  # [30, 2, 10, 3, 64]: keys and values per layer
    ```
    """

    def __init__(self, base, prefix_length, num_layers, num_key_value_heads, head_dim, reparameterize=False,
                 hidden_dim=None, bottleneck_size=512, **kwargs):
        super().__init__(base, **kwargs)
        self.prefix_length = prefix_length
        self.num_layers = num_layers
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.reparameterize = reparameterize
        self.hidden_dim = hidden_dim
        self.bottleneck_size = bottleneck_size

    @property
    def _shape(self):
        return (self.num_layers, 2, self.prefix_length, self.num_key_value_heads, self.head_dim)

    def build(self, input_shape):
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        if not self.reparameterize:
            self.keys = self.add_weight(name="keys", shape=self._shape[:1] + self._shape[2:], initializer=init)
            self.values = self.add_weight(name="values", shape=self._shape[:1] + self._shape[2:], initializer=init)
            return
        self.embedding = self.add_weight(name="embedding", shape=(self.prefix_length, self.hidden_dim), initializer=init)
        self.encoder = keras.layers.Dense(self.bottleneck_size, activation="tanh", dtype=self.dtype_policy, name="encoder")
        self.encoder.build((self.prefix_length, self.hidden_dim))
        self.decoder = keras.layers.Dense(math.prod(self._shape) // self.prefix_length, dtype=self.dtype_policy,
                                          name="decoder")
        self.decoder.build((self.prefix_length, self.bottleneck_size))

    def past(self):
        """The prefix's keys and values, `[layers, 2, prefix_length, kv heads, head_dim]`, float32."""
        if not self.reparameterize:
            return ops.stack([ops.cast(self.keys, "float32"), ops.cast(self.values, "float32")], axis=1)
        flat = ops.cast(self.decoder(self.encoder(ops.cast(self.embedding, "float32"))), "float32")
        past = ops.reshape(flat, (self.prefix_length, self.num_layers, 2, self.num_key_value_heads, self.head_dim))
        return ops.transpose(past, (1, 2, 0, 3, 4))

    def keyed_weights(self, scope):
        if not self.reparameterize:
            return super().keyed_weights(scope)
        past = self.past()  # folded: what the MLP computes now
        return {"keys": past[:, 0], "values": past[:, 1]}

    def get_config(self):
        config = super().get_config()
        config.update(
            prefix_length=self.prefix_length, num_layers=self.num_layers,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim, reparameterize=self.reparameterize,
            hidden_dim=self.hidden_dim, bottleneck_size=self.bottleneck_size,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(None, **config)


@dataclasses.dataclass
class PrefixConfig(AdapterConfig):
    """Prefix tuning in every encoder layer's self-attention.

    Args:
        prefix_length: prefix positions per layer (AdapterHub: 30).
        reparameterize: train through the MLP (Li & Liang; AdapterHub's
            `flat=False`); saved adapter folders hold the folded prefixes and
            say `reparameterize: false`.
        bottleneck_size: the MLP's hidden width (AdapterHub: 512).
        target_layers: see `AdapterConfig`.

    Example:
    ```python
    PrefixConfig(prefix_length=20, reparameterize=False)
    ```
    """

    method: ClassVar[str] = "prefix"
    default_sites: ClassVar[tuple] = (ATTENTION_SITE, "key", "value")
    changes_sequence: ClassVar[bool] = True
    # Through the MLP, 1e-2 collapses training on BBC News to chance; 1e-3 trains. See BENCHMARKS.md.
    default_learning_rate: ClassVar[float] = 1e-3

    prefix_length: int = 30
    reparameterize: bool = True
    bottleneck_size: int = 512

    def validate(self):
        super().validate()
        check_positive_int("PrefixConfig", "prefix_length", self.prefix_length)
        check_positive_int("PrefixConfig", "bottleneck_size", self.bottleneck_size)
        if not isinstance(self.reparameterize, bool):
            raise ValueError(f"PrefixConfig.reparameterize must be True or False, got {self.reparameterize!r}.")

    def as_saved(self):
        return dataclasses.replace(self, reparameterize=False)

    def acts_at_input_end(self, family):
        # A decoder's prefix goes in front of its KV cache, which the model fills before the first layer runs.
        return family.cached_forward is not None

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        if site == INPUT_END_SITE:  # a decoder: `base` is the backbone
            return CachePrefix(
                None, self.prefix_length, *shared["cache_shape"], reparameterize=self.reparameterize,
                hidden_dim=hidden_dim, bottleneck_size=self.bottleneck_size, dtype=dtype, name="prefix",
            )
        if site == ATTENTION_SITE:
            # No reference to the attention layer: Keras' saving walks unit attributes.
            unit = PrefixAttention(
                None, self.prefix_length, reparameterize=self.reparameterize, hidden_dim=hidden_dim,
                bottleneck_size=self.bottleneck_size, shared=shared, dtype=dtype, name="prefix",
            )
            shared["layer"] = unit  # the key and value units of this layer come next
            return unit
        attention = shared["layer"] if self.reparameterize else None
        return PrefixProjection(
            base, self.prefix_length, attention=attention, half=int(site == "value"), dtype=dtype, name=base.name
        )
