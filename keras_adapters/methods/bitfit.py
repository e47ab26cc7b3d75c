"""BitFit: only the bias terms train (Ben Zaken et al. 2022)."""

import dataclasses
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import RoutedUnits
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import check_sites
from keras_adapters.methods.base import per_row
from keras_adapters.methods.lora import LORA_SITES

#: Every bias of a keras-hub TransformerEncoder: the projections' and the
#: layer norms' (beta).
BITFIT_SITES = LORA_SITES + ("self_attention_layer_norm", "feedforward_layer_norm")


def _bias(base):
    bias = getattr(base, "beta" if isinstance(base, keras.layers.LayerNormalization) else "bias", None)
    if bias is None:
        raise ValueError(f"Layer {base.name!r} has no bias, so BitFit has nothing to train there.")
    return bias


class RoutedBiasShift(RoutedUnits):
    """Each row's own bias shift (zeros for adapters without one here)."""

    def _shifted(self, y):
        shape = tuple(self.first.shift.shape)

        def shifts():
            return [u.shift if u is not None else ops.zeros(shape) for u in self.units]

        return ops.add(y, per_row(self.rows(shifts, y.dtype, "shift"), y))

    def adjust_linear(self, x, y, training=None):
        return y if self.first.after_norm else self._shifted(y)

    def transform_output(self, y, training=None):
        return self._shifted(y) if self.first.after_norm else y


@keras.saving.register_keras_serializable(package="keras_adapters")
class BiasShift(WrappedLayer):
    """`base(x)` with its bias moved by a learned shift that starts at zero.

    BitFit trains the biases; here each named adapter trains its own shift
    of them, so the backbone's biases stay as they were and several adapters
    share one backbone (`merge` adds the shift to the bias: exact). On a
    projection the shift goes in before the activation; on a layer norm it
    is added to the output (its `beta`).

    Args:
        base: a `Dense`/`EinsumDense` with a bias, or a `LayerNormalization`
            with `center=True`.

    Example:
    ```python
    BiasShift(query_dense)  # trains a vector shaped like query_dense.bias
    ```
    """

    mergeable = True
    routed = RoutedBiasShift

    def __init__(self, base, **kwargs):
        super().__init__(base, **kwargs)
        self.after_norm = isinstance(base, keras.layers.LayerNormalization)
        _bias(base)

    def route_key(self):
        return (type(self), self.after_norm)

    def build(self, input_shape):
        self.shift = self.add_weight(name="bias_shift", shape=tuple(_bias(self.base).shape), initializer="zeros")

    def adjust_linear(self, x, y, training=None):
        return y if self.after_norm else ops.add(y, ops.cast(self.shift, y.dtype))

    def transform_output(self, y, training=None):
        return ops.add(y, ops.cast(self.shift, y.dtype)) if self.after_norm else y

    def merge(self):
        bias = _bias(self.base)
        bias.assign(ops.cast(bias, "float32") + ops.cast(self.shift, "float32"))


@dataclasses.dataclass
class BitFitConfig(AdapterConfig):
    """BitFit: the biases of the chosen sites train, nothing else (but the head).

    Args:
        target_modules: a subset of the projections (`query`, `key`,
            `value`, `attention_output`, `feedforward_intermediate_dense`,
            `feedforward_output_dense`) and layer norms
            (`self_attention_layer_norm`, `feedforward_layer_norm`). Default:
            all of them, as in the paper.
        target_layers: see `AdapterConfig`.

    Example:
    ```python
    BitFitConfig(target_modules=("query", "feedforward_intermediate_dense"))
    ```
    """

    method: ClassVar[str] = "bitfit"
    default_learning_rate: ClassVar[float] = 1e-2

    target_modules: tuple = BITFIT_SITES

    def validate(self):
        super().validate()
        self.target_modules = check_sites("BitFitConfig", "target_modules", self.target_modules, BITFIT_SITES)

    def sites(self):
        return self.target_modules

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        return BiasShift(base, dtype=dtype, name=base.name)
