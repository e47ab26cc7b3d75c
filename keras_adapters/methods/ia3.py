"""(IA)^3: learned rescaling of keys, values and FFN activations (Liu et al. 2022)."""

import dataclasses
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import LINEAR_SITES
from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import RoutedUnits
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import per_row
from keras_adapters.methods.base import check_sites
from keras_adapters.methods.base import check_choice
from keras_adapters.methods.base import canonical_kernel
from keras_adapters.methods.base import kernel_split
from keras_adapters.methods.base import layout_kernel


class RoutedIA3(RoutedUnits):
    """Each row scaled by its adapter's vector (ones for adapters without one)."""

    def _scaled(self, t):
        shape = tuple(self.first.scale.shape)

        def scales():
            return [u.scale if u is not None else ops.ones(shape) for u in self.units]

        return ops.multiply(t, per_row(self.rows(scales, t.dtype, "scale"), t))

    def transform_input(self, x, training=None):
        return self._scaled(x) if self.first.position == "input" else x

    def adjust_linear(self, x, y, training=None):
        return self._scaled(y) if self.first.position == "output" else y


@keras.saving.register_keras_serializable(package="keras_adapters")
class IA3Scaling(WrappedLayer):
    """Scales a frozen projection's output, or its input, by a learned vector.

    Args:
        base: the `Dense` or `EinsumDense` projection.
        position: `"output"` computes `base(x) * l` (keys, values);
            `"input"` computes `base(x * l)`, which for the feed-forward output
            projection rescales the intermediate activations (as peft does).
            The vector `l` starts at ones, so the layer starts as `base`.

    Example:
    ```python
    IA3Scaling(value_dense, position="output")
    ```
    """

    mergeable = True
    routed = RoutedIA3

    def __init__(self, base, position="output", **kwargs):
        super().__init__(base, **kwargs)
        check_choice("IA3Scaling", "position", position, ("input", "output"))
        self.position = position

    def route_key(self):
        return (type(self), self.position)

    def build(self, input_shape):
        in_shape, out_shape = kernel_split(self.base)
        self._n_in = len(in_shape)
        self.scale = self.add_weight(
            name="scale",
            shape=out_shape if self.position == "output" else in_shape,
            initializer="ones",
        )

    def transform_input(self, x, training=None):
        if self.position == "input":
            return ops.multiply(x, ops.cast(self.scale, x.dtype))
        return x

    def adjust_linear(self, x, y, training=None):
        if self.position == "output":
            return ops.multiply(y, ops.cast(self.scale, y.dtype))
        return y

    def merge(self):
        kernel = canonical_kernel(self.base)  # input dims first, then output dims
        scale = ops.cast(self.scale, "float32")
        if self.position == "output":
            self.base.kernel.assign(layout_kernel(self.base, kernel * scale))
            if getattr(self.base, "bias", None) is not None:
                self.base.bias.assign(ops.cast(self.base.bias, "float32") * scale)
        else:
            n_out = len(kernel.shape) - self._n_in
            scale = ops.reshape(scale, tuple(scale.shape) + (1,) * n_out)
            self.base.kernel.assign(layout_kernel(self.base, kernel * scale))

    def get_config(self):
        config = super().get_config()
        config["position"] = self.position
        return config


@dataclasses.dataclass
class IA3Config(AdapterConfig):
    """(IA)^3 on keys, values and the feed-forward intermediate activations.

    Args:
        target_modules: projections to rescale, from `query`, `key`, `value`,
            `attention_output`, `feedforward_intermediate_dense`,
            `feedforward_output_dense`.
        feedforward_modules: those of them whose *input* is rescaled (peft's
            `feedforward_modules`); the others have their output rescaled.
            The default scales the feed-forward block's intermediate
            activation, i.e. the input of its output projection.
        target_layers: see `AdapterConfig`.

    Example:
    ```python
    IA3Config()  # keys, values, feed-forward activations (the paper's)
    IA3Config(target_modules=("key", "value", "attention_output", "feedforward_output_dense"),
              feedforward_modules=("attention_output", "feedforward_output_dense"))  # peft's BERT default
    ```
    """

    method: ClassVar[str] = "ia3"
    default_learning_rate: ClassVar[float] = 3e-3

    target_modules: tuple = ("key", "value", "feedforward_output_dense")
    feedforward_modules: tuple = ("feedforward_output_dense",)

    def validate(self):
        super().validate()
        self.target_modules = check_sites("IA3Config", "target_modules", self.target_modules, LINEAR_SITES)
        ff = self.feedforward_modules  # may be empty: every output rescaled
        self.feedforward_modules = check_sites("IA3Config", "feedforward_modules", ff, LINEAR_SITES) if ff else ()

    def sites(self):
        return self.target_modules

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        position = "input" if site in self.feedforward_modules else "output"
        return IA3Scaling(base, position=position, dtype=dtype, name=base.name)
