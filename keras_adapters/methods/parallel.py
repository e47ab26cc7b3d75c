"""Parallel and scaled parallel adapters (He et al. 2022, "Towards a Unified
View of Parameter-Efficient Transfer Learning").

A bottleneck beside the feed-forward block: it reads the block's input `x`
and its scaled output is added to the block's output,
`FFN(x) + s * up(relu(down(x)))`, before the residual add and layer norm.
The two ends sit at two sites of the encoder layer: the `reader` at the
feed-forward block's first projection (it sees `x`), the `writer` after the
block's dropout (it adds what the reader computed in the same call).
"""

import dataclasses
from typing import ClassVar

import keras
from keras import ops

from keras_adapters.methods.base import RoutedUnits
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import per_row
from keras_adapters.methods.bottleneck import BottleneckAdapter
from keras_adapters.methods.bottleneck import BottleneckConfig
from keras_adapters.methods.bottleneck import RoutedBottleneck

READ_SITE = "feedforward_intermediate_dense"
WRITE_SITE = "feedforward_dropout"


class RoutedParallelReader(RoutedBottleneck):
    """Each row's own scaled bottleneck of the block input, kept for the writer."""

    def transform_input(self, x, training=None):
        def scalings():
            return [ops.convert_to_tensor(u.scale_value()) if u is not None else ops.zeros(()) for u in self.units]

        scale = self.rows(scalings, x.dtype, "scaling")
        # RoutedBottleneck adds the residual to its input: take it back out.
        residual = ops.subtract(RoutedBottleneck.transform_output(self, x), x)
        self.first.pending = ops.multiply(residual, per_row(scale, residual))
        return x

    def transform_output(self, y, training=None):
        return y


class RoutedParallelWriter(RoutedUnits):
    def transform_output(self, y, training=None):
        return ops.add(y, self.first.reader.pending)


@keras.saving.register_keras_serializable(package="keras_adapters")
class ParallelAdapterReader(BottleneckAdapter):
    """The bottleneck of a parallel adapter, applied to the feed-forward input.

    Args:
        base: the feed-forward block's first projection (unchanged).
        bottleneck_size, activation, init: see `BottleneckAdapter`.
        scaling: a float `s`, or `"learned"` (a scalar weight starting at 1).

    Example:
    ```python
    reader = ParallelAdapterReader(intermediate_dense, bottleneck_size=192, scaling=4.0)
    ```
    """

    routed = RoutedParallelReader

    def __init__(self, base, bottleneck_size, scaling=4.0, **kwargs):
        super().__init__(base, bottleneck_size, **kwargs)
        self.scaling = scaling
        self.pending = None

    def build(self, input_shape):
        super().build(input_shape)
        if self.scaling == "learned":
            self.learned_scaling = self.add_weight(name="scaling", shape=(), initializer="ones")

    def scale_value(self):
        if self.scaling == "learned":
            return ops.cast(self.learned_scaling, "float32")
        return ops.convert_to_tensor(float(self.scaling), "float32")

    def transform_input(self, x, training=None):
        self.pending = ops.multiply(self.residual(x), ops.cast(self.scale_value(), x.dtype))
        return x

    def transform_output(self, y, training=None):
        return y

    def get_config(self):
        return {**super().get_config(), "scaling": self.scaling}


@keras.saving.register_keras_serializable(package="keras_adapters")
class ParallelAdapterWriter(WrappedLayer):
    """Adds what its reader computed from the feed-forward input to the
    block's output. Holds no weights.

    Args:
        base: the dropout after the feed-forward block.
        reader: the `ParallelAdapterReader` of the same layer (not tracked).
    """

    routed = RoutedParallelWriter

    def __init__(self, base, reader=None, **kwargs):
        super().__init__(base, **kwargs)
        object.__setattr__(self, "reader", reader)

    def transform_output(self, y, training=None):
        if self.reader is None or self.reader.pending is None:
            raise RuntimeError("A parallel adapter's writer ran before its reader in this call.")
        return ops.add(y, ops.cast(self.reader.pending, y.dtype))

    def build(self, input_shape):
        self.built = True

    @classmethod
    def from_config(cls, config):
        return cls(None, **config)


@dataclasses.dataclass
class ParallelAdapterConfig(BottleneckConfig):
    """Parallel adapter beside each feed-forward block (AdapterHub's `par`).

    Defaults follow AdapterHub's `ParBnConfig` (the scaled parallel adapter
    of He et al.): bottleneck `hidden // 2`, ReLU, scaling 4, up-projection at
    zero (starts as the identity).

    Args:
        scaling: `s`, a float (1.0 for the plain parallel adapter), or
            `"learned"`.
        reduction_factor, bottleneck_size, activation, init, target_layers:
            see `BottleneckConfig`.

    Example:
    ```python
    ParallelAdapterConfig(reduction_factor=4, scaling=1.0)
    ```
    """

    method: ClassVar[str] = "parallel"
    default_sites: ClassVar[tuple] = (READ_SITE, WRITE_SITE)
    fusable: ClassVar[bool] = False
    # 1e-3 (the other bottlenecks') collapses training to chance on BBC News: the
    # scaled output (s = 4, width hidden // 2) is 30x a Houlsby adapter's. See BENCHMARKS.md.
    default_learning_rate: ClassVar[float] = 3e-4

    reduction_factor: int = 2
    scaling: float | str = 4.0

    def validate(self):
        super().validate()
        if self.scaling != "learned" and (
            isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) or self.scaling <= 0
        ):
            try:  # the CLI passes text
                self.scaling = float(self.scaling)
            except (TypeError, ValueError):
                self.scaling = -1.0
            if self.scaling <= 0:
                raise ValueError('ParallelAdapterConfig.scaling must be a number > 0 or "learned".')

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        if site == READ_SITE:
            # Sites are wrapped layer by layer, reader first.
            reader = ParallelAdapterReader(
                base, self.size_for(hidden_dim), scaling=self.scaling, activation=self.activation,
                init=self.init, dtype=dtype, name="parallel_adapter",
            )
            shared["reader"] = reader
            return reader
        return ParallelAdapterWriter(base, reader=shared["reader"], dtype=dtype, name="parallel_output")
