"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021)."""

import dataclasses
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import RoutedUnits
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import pad_axis
from keras_adapters.methods.base import per_row
from keras_adapters.methods.base import check_choice
from keras_adapters.methods.base import check_positive_int
from keras_adapters.methods import per_example

BOTTLENECK_INITS = ("zeros", "near_identity")


class RoutedBottleneck(RoutedUnits):
    """Each row's `y + up(activation(down(y)))` with gathered projections.

    Bottleneck sizes are zero-padded to the largest (the padded up-projection
    rows are zero, so the padding adds exactly nothing whatever the
    activation gives at 0); adapters without a bottleneck here get zero
    projections, i.e. the identity.
    """

    def transform_output(self, y, training=None):
        size = max(u.bottleneck_size for u in self.units if u is not None)
        hidden = int(y.shape[-1])
        shapes = ((hidden, size), (size,), (size, hidden), (hidden,))
        axes = (1, 0, 0, 0)  # the axis each projection is padded along

        def stacked(index, role):
            def values():
                return [
                    pad_axis(u.projections()[index], shapes[index][axes[index]], axes[index])
                    if u is not None else ops.zeros(shapes[index])
                    for u in self.units
                ]

            return self.rows(values, y.dtype, role)

        down_kernel, down_bias, up_kernel, up_bias = (
            stacked(i, role) for i, role in enumerate(("down_kernel", "down_bias", "up_kernel", "up_bias"))
        )
        flat = ops.reshape(y, (*ops.shape(y)[:2], hidden))
        h = ops.einsum("bsh,bhk->bsk", flat, down_kernel) + per_row(down_bias, flat)
        r = ops.einsum("bsk,bkh->bsh", self.first.activation(h), up_kernel) + per_row(up_bias, flat)
        return ops.add(y, ops.reshape(r, ops.shape(y)))


@keras.saving.register_keras_serializable(package="keras_adapters")
class BottleneckAdapter(WrappedLayer):
    """Residual bottleneck: `y + up(activation(down(y)))`, `y = base(x)`.

    Placed after a sublayer's dropout and before the residual add and layer
    norm of a transformer block (the placement of google-research/adapter-bert).

    Args:
        base: the layer whose output is adapted (e.g. a dropout layer), or
            `None` to adapt the input itself.
        bottleneck_size: int, width of the down-projection.
        activation: the non-linearity between the projections.
        init: `"zeros"` (default): the up-projection starts at zero, so the
            adapter starts as the identity. `"near_identity"`: both
            projections drawn from a truncated normal with stddev 1e-2 (the
            paper's initialisation), close to but not exactly the identity.

    Example:
    ```python
    adapter = BottleneckAdapter(None, bottleneck_size=8)
    y = adapter(np.ones((2, 5, 32)))  # equals the input: up starts at zero
    ```
    """

    routed = RoutedBottleneck

    def __init__(
        self, base, bottleneck_size, activation="relu", init="zeros", **kwargs
    ):
        super().__init__(base, **kwargs)
        self.bottleneck_size = bottleneck_size
        self.activation = keras.activations.get(activation)
        self.init = init

    def route_key(self):
        # Only units with the same activation can share one routed step.
        return (type(self), self.activation)

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if self.init == "zeros":
            down_init, up_init = "glorot_uniform", "zeros"
        else:
            down_init = keras.initializers.TruncatedNormal(stddev=1e-2)
            up_init = keras.initializers.TruncatedNormal(stddev=1e-2)
        self.down = keras.layers.Dense(
            self.bottleneck_size,
            kernel_initializer=down_init,
            dtype=self.dtype_policy,
            name="down",
        )
        self.down.build(input_shape)
        self.up = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=up_init,
            dtype=self.dtype_policy,
            name="up",
        )
        self.up.build(tuple(input_shape[:-1]) + (self.bottleneck_size,))

    def residual(self, y):
        """What the adapter adds to `y` (the input AdapterFusion combines)."""
        return per_example.dense(self.up, self.activation(per_example.dense(self.down, y)))

    def projections(self):
        """(down kernel, down bias, up kernel, up bias), for per-row routing."""
        return self.down.kernel, self.down.bias, self.up.kernel, self.up.bias

    def transform_output(self, y, training=None):
        return ops.add(y, self.residual(y))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bottleneck_size": self.bottleneck_size,
                "activation": keras.activations.serialize(self.activation),
                "init": self.init,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(None, **config)


@dataclasses.dataclass
class BottleneckConfig(AdapterConfig):
    """Fields shared by the bottleneck adapter methods.

    Args:
        reduction_factor: bottleneck size is `hidden_dim // reduction_factor`.
        bottleneck_size: explicit bottleneck size; overrides
            `reduction_factor` when set.
        activation: non-linearity inside the adapter.
        init: `"zeros"` (starts as the identity) or `"near_identity"`.
        target_layers: see `AdapterConfig`.
    """

    default_learning_rate: ClassVar[float] = 1e-3
    fusable: ClassVar[bool] = True

    reduction_factor: int = 16
    bottleneck_size: int | None = None
    activation: str = "relu"
    init: str = "zeros"

    def validate(self):
        super().validate()
        name = type(self).__name__
        check_positive_int(name, "reduction_factor", self.reduction_factor)
        check_positive_int(
            name, "bottleneck_size", self.bottleneck_size, allow_none=True
        )
        check_choice(name, "init", self.init, BOTTLENECK_INITS)
        try:
            keras.activations.get(self.activation)
        except ValueError:
            raise ValueError(
                f"{name}.activation {self.activation!r} is not a Keras "
                "activation name (e.g. 'relu', 'gelu', 'swish')."
            ) from None

    def size_for(self, hidden_dim):
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, hidden_dim // self.reduction_factor)

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        return BottleneckAdapter(
            base,
            bottleneck_size=self.size_for(hidden_dim),
            activation=self.activation,
            init=self.init,
            dtype=dtype,
            name=site.replace("dropout", "adapter"),
        )


@dataclasses.dataclass
class HoulsbyConfig(BottleneckConfig):
    """Houlsby adapters: after attention and after the feed-forward block.

    The backbone's layer norms train too, as in the paper.

    Example:
    ```python
    config = HoulsbyConfig(reduction_factor=16)
    model = AdapterTextClassifier.from_preset(preset, num_classes=2,
                                              adapter=config)
    ```
    """

    method: ClassVar[str] = "houlsby"
    default_sites: ClassVar[tuple] = (
        "self_attention_dropout",
        "feedforward_dropout",
    )
    trainable_sites: ClassVar[tuple] = (
        "self_attention_layer_norm",
        "feedforward_layer_norm",
    )


@dataclasses.dataclass
class PfeifferConfig(BottleneckConfig):
    """Pfeiffer adapters: one bottleneck after the feed-forward block only.

    The backbone, layer norms included, stays frozen.
    """

    method: ClassVar[str] = "pfeiffer"
    default_sites: ClassVar[tuple] = ("feedforward_dropout",)
