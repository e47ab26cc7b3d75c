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


@keras.saving.register_keras_serializable(package="keras_adapters")
class NormedInputBottleneck(BottleneckAdapter):
    """A bottleneck that reads the block's own layer norm: at a layer-norm site
    (input `z = h + x`, sublayer output plus residual) it turns `z` into
    `z + up(activation(down(LN(z))))`, which the frozen `LN` then normalises.

    That is AdapterHub's `original_ln_before=True` (its `seq_bn`):
    `LN(h + up(relu(down(LN(h + x)))) + x)`, the layer norm applied twice.

    Args:
        base: the block's layer norm (frozen, shared with the backbone).
        bottleneck_size, activation, init: see `BottleneckAdapter`.
    """

    routed = None  # its input is the pre-norm sum, which per-row routing does not gather

    def transform_input(self, x, training=None):
        return ops.add(x, self.residual(self.base(x)))

    def transform_output(self, y, training=None):
        return y


#: Where a bottleneck that reads the normalised sum sits, for each usual site.
NORMED_SITES = {
    "self_attention_dropout": "self_attention_layer_norm",
    "feedforward_dropout": "feedforward_layer_norm",
}


@dataclasses.dataclass
class BottleneckConfig(AdapterConfig):
    """Fields shared by the bottleneck adapter methods.

    Args:
        reduction_factor: bottleneck size is `hidden_dim // reduction_factor`.
        bottleneck_size: explicit bottleneck size; overrides
            `reduction_factor` when set.
        activation: non-linearity inside the adapter.
        init: `"zeros"` (starts as the identity) or `"near_identity"`.
        original_ln_before: the adapter reads the sublayer output after the
            residual add and the block's own (frozen) layer norm, `LN(h + x)`,
            and adds to `h + x` before that layer norm runs
            (`NormedInputBottleneck`; AdapterHub's `original_ln_before`, as
            in its `seq_bn`). Default: it reads and adds to `h` alone.
        target_layers: see `AdapterConfig`.
    """

    default_learning_rate: ClassVar[float] = 1e-3
    #: Whether `original_ln_before` is offered (plain bottleneck units only).
    normed_input: ClassVar[bool] = False

    reduction_factor: int = 16
    bottleneck_size: int | None = None
    activation: str = "relu"
    init: str = "zeros"
    original_ln_before: bool = False

    @property
    def fusable(self):
        # AdapterFusion combines what units add at a dropout site.
        return not self.original_ln_before

    def sites(self):
        if self.original_ln_before:
            return tuple(NORMED_SITES.get(s, s) for s in self.default_sites)
        return tuple(self.default_sites)

    def validate(self):
        super().validate()
        name = type(self).__name__
        check_positive_int(name, "reduction_factor", self.reduction_factor)
        check_positive_int(
            name, "bottleneck_size", self.bottleneck_size, allow_none=True
        )
        check_choice(name, "init", self.init, BOTTLENECK_INITS)
        if not isinstance(self.original_ln_before, bool):
            raise ValueError(f"{name}.original_ln_before must be True or False, got {self.original_ln_before!r}.")
        if self.original_ln_before and not self.normed_input:
            raise ValueError(f"{name} has no original_ln_before placement (Houlsby and Pfeiffer adapters do).")
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
        kind = NormedInputBottleneck if site in NORMED_SITES.values() else BottleneckAdapter
        return kind(
            base,
            bottleneck_size=self.size_for(hidden_dim),
            activation=self.activation,
            init=self.init,
            dtype=dtype,
            name=site.replace("dropout", "adapter").replace("layer_norm", "adapter"),
        )


@dataclasses.dataclass
class HoulsbyConfig(BottleneckConfig):
    """Houlsby adapters: after attention and after the feed-forward block.

    The backbone's layer norms train too (each adapter its own copies), as
    in the paper.

    Args:
        train_layer_norms: `False` keeps the layer norms frozen: with
            `activation="swish"` this is AdapterHub's `double_seq_bn`.
        See `BottleneckConfig` for the others.

    Example:
    ```python
    config = HoulsbyConfig(reduction_factor=16)
    model = AdapterTextClassifier.from_preset(preset, num_classes=2,
                                              adapter=config)
    HoulsbyConfig(activation="swish", train_layer_norms=False)  # AdapterHub's double_seq_bn
    ```
    """

    method: ClassVar[str] = "houlsby"
    normed_input: ClassVar[bool] = True
    default_sites: ClassVar[tuple] = (
        "self_attention_dropout",
        "feedforward_dropout",
    )
    trainable_sites: ClassVar[tuple] = (
        "self_attention_layer_norm",
        "feedforward_layer_norm",
    )

    train_layer_norms: bool = True

    def validate(self):
        super().validate()
        if not isinstance(self.train_layer_norms, bool):
            raise ValueError(f"HoulsbyConfig.train_layer_norms must be True or False, got {self.train_layer_norms!r}.")
        if self.train_layer_norms and self.original_ln_before:
            raise ValueError(
                "HoulsbyConfig: original_ln_before reads the block's frozen layer norms; set "
                "train_layer_norms=False with it."
            )

    def unit_sites(self):
        return tuple(self.sites()) + (tuple(self.trainable_sites) if self.train_layer_norms else ())


@dataclasses.dataclass
class PfeifferConfig(BottleneckConfig):
    """Pfeiffer adapters: one bottleneck after the feed-forward block only.

    The backbone, layer norms included, stays frozen. With
    `original_ln_before=True` the adapter reads the normalised sum, which is
    AdapterHub's `seq_bn`: `LN(h + up(relu(down(LN(h + x)))) + x)`.

    Example:
    ```python
    PfeifferConfig(original_ln_before=True)  # AdapterHub's seq_bn (reduction 16, ReLU)
    ```
    """

    method: ClassVar[str] = "pfeiffer"
    normed_input: ClassVar[bool] = True
    default_sites: ClassVar[tuple] = ("feedforward_dropout",)
