"""What every adapter method is made of: a config dataclass and wrapper layers.

A method never touches the backbone itself. Its config says *where* it acts
(`sites`: named places inside a keras-hub `TransformerEncoder`, see
`keras_adapters.core.injection.SITES`), *how* (`wrap`: a Keras layer that replaces
the layer at that site and calls it), and which original weights stay
trainable. `keras_adapters.core.injection.inject_adapters` does the rest, the same
way for every method.
"""

import contextlib
import dataclasses
import inspect
import math
import re
from typing import ClassVar

import keras
import tensorflow as tf
from keras import ops

from keras_adapters.methods import per_example


#: The projections of a keras-hub `TransformerEncoder` (sites, see
#: `keras_adapters.core.injection.SITES`): the layers that multiply by a kernel.
PROJECTION_SITES = (
    "query",
    "key",
    "value",
    "attention_output",
    "feedforward_intermediate_dense",
    "feedforward_output_dense",
)
#: Every projection site of any backbone family: the above, and the gate of
#: the gated feed-forward blocks of decoders (Llama's, `backbones.llama`).
LINEAR_SITES = PROJECTION_SITES + ("feedforward_gate_dense",)


@dataclasses.dataclass
class AdapterConfig:
    """Base class of the method configs.

    Subclasses are dataclasses whose fields are the method's hyperparameters.
    They validate their fields on construction and round-trip through
    `get_config()` / `from_config()` (plain JSON-able dicts that carry the
    method name).

    Args:
        target_layers: regular expression matched (in full) against encoder
            layer names such as `"transformer_layer_3"`; only matching layers
            get the method. Defaults to every encoder layer.
    """

    method: ClassVar[str] = ""
    #: Sites (see `injection.SITES`) this method replaces with a wrapper.
    default_sites: ClassVar[tuple] = ()
    #: Original backbone sublayers that stay trainable (e.g. layer norms).
    trainable_sites: ClassVar[tuple] = ()
    #: Whether the original backbone weights are frozen.
    freezes_backbone: ClassVar[bool] = True
    #: Whether AdapterFusion can combine adapters of this method (its units
    #: add a residual to the site's output).
    fusable: ClassVar[bool] = False
    #: Learning rate that works for this method with AdamW (overridable).
    default_learning_rate: ClassVar[float] = 1e-3
    #: Whether the method acts on the backbone's input (the embedding
    #: output) instead of inside its encoder layers.
    input_end: ClassVar[bool] = False
    #: Whether the method changes the sequence the encoder attends over
    #: (prompt and prefix tuning): it then runs alone or in a `Stack`.
    changes_sequence: ClassVar[bool] = False

    target_layers: str = ".*"

    def __post_init__(self):
        self.validate()

    def validate(self):
        try:
            re.compile(self.target_layers)
        except (re.error, TypeError) as e:
            raise ValueError(
                f"{type(self).__name__}.target_layers must be a regular "
                f"expression, got {self.target_layers!r}: {e}"
            ) from None

    def acts_at_input_end(self, family):
        """Whether this adapter's one unit sits at the backbone's input end on
        layers of `family` (a `keras_adapters.backbones.family.Family`)."""
        return self.input_end

    def sites(self):
        """The site names this config wraps, in a fixed order."""
        return tuple(self.default_sites)

    def as_saved(self):
        """The config an adapter folder records (a method that folds training-
        only weights away when saving says so here)."""
        return self

    def prepare(self, tokenizer, vocabulary_size):
        """The config to build units from, given the model's tokenizer (a
        method whose initialisation reads token ids fills them in here)."""
        return self

    def applies_to_layer(self, encoder_name):
        return re.fullmatch(self.target_layers, encoder_name) is not None

    def for_unit(self, path):
        """The config the unit at `path` (`"transformer_layer_3/query"`) is
        built from: this one, unless the method sets options per unit."""
        return self

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        """Return the layer that replaces `base` at `site`.

        Args:
            site: the site name (a key of `injection.SITES`).
            base: the original layer at that site.
            dtype: the backbone's dtype policy, for the new layer.
            hidden_dim: the backbone's hidden size.
            shared: a dict the units of one adapter share, filled by the
                units (sites are wrapped layer by layer, in `unit_sites`
                order): weights that one adapter uses at every layer, or one
                end of a unit that spans two sites.
        """
        raise NotImplementedError

    def unit_sites(self):
        """Every site this method puts a unit at: its own layers, then the
        per-adapter copies of the original layers it trains."""
        return tuple(self.sites()) + tuple(self.trainable_sites)

    def make_unit(self, site, base, *, dtype, hidden_dim, shared=None):
        """The unit for `site`: `wrap`, or a trainable copy of `base`."""
        if site in self.trainable_sites:
            return TrainableCopy(base, dtype=dtype, name=base.name)
        return self.wrap(site, base, dtype=dtype, hidden_dim=hidden_dim, shared=Shared() if shared is None else shared)

    def get_config(self):
        config = {"method": self.method}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            config[field.name] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        method = config.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(
                f"{cls.__name__} cannot load a config for method {method!r}; "
                f"use keras_adapters.get_adapter_config(config) instead."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(
                f"Unknown field(s) {unknown} for {cls.__name__}; "
                f"known fields: {sorted(names)}."
            )
        for f in dataclasses.fields(cls):
            if f.name in config and isinstance(config[f.name], list):
                config[f.name] = tuple(config[f.name])
        return cls(**config)


class Shared:
    """What the units of one adapter share (see `AdapterConfig.wrap`).

    Dict-like but not a dict: Keras' saving walks the dicts it finds on a
    layer, and the entries here (owned and saved by one unit) may lead back
    to the unit that holds them.
    """

    def __init__(self):
        self._items = {}

    def __getitem__(self, key):
        return self._items[key]

    def __setitem__(self, key, value):
        self._items[key] = value

    def __contains__(self, key):
        return key in self._items

    def update(self, **items):
        self._items.update(items)


def check_positive_int(owner, name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{owner}.{name} must be a positive integer, got {value!r}."
        )


def check_choice(owner, name, value, choices):
    if value not in choices:
        raise ValueError(
            f"{owner}.{name} must be one of {sorted(choices)}, got {value!r}."
        )


def pattern_value(patterns, path, separator="/"):
    """The value of the first key of `patterns` that matches `path` or its end
    after a `separator` (peft's `rank_pattern` rule, which uses `.`), or None."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*{re.escape(separator)})?({key})", path):
            return value
    return None


def check_patterns(owner, name, patterns, check_value):
    """`patterns` as a dict of valid regular expressions -> checked values (or None)."""
    if patterns is None:
        return None
    if not isinstance(patterns, dict):
        raise ValueError(f"{owner}.{name} must be a dict of unit patterns to values, got {patterns!r}.")
    for key, value in patterns.items():
        try:
            re.compile(key)
        except (re.error, TypeError) as e:
            raise ValueError(f"{owner}.{name} key {key!r} is not a regular expression: {e}") from None
        check_value(f"{name}[{key!r}]", value)
    return dict(patterns)


def check_sites(owner, name, value, allowed):
    """A non-empty tuple of site names from `allowed` (a lone string is one)."""
    value = (value,) if isinstance(value, str) else tuple(value)
    if not value or any(v not in allowed for v in value):
        raise ValueError(
            f"{owner}.{name} {list(value)} must be a non-empty list of {list(allowed)}."
        )
    return value


class UnitHooks:
    """The hooks a site calls on a unit (see `WrappedLayer`), as identities."""

    def transform_input(self, x, training=None):
        return x

    def adjust_linear(self, x, y, training=None):
        return y

    def transform_output(self, y, training=None):
        return y


class WrappedLayer(UnitHooks, keras.layers.Layer):
    """One adapter's layer at one site of a backbone: a *unit*.

    `base` is the original (frozen) layer at the site. The unit keeps a plain
    reference to it (not tracked: the site owns it), and says how it changes
    the site's computation through up to four hooks, which the site
    (`keras_adapters.core.injection.AdapterSite`) calls in this order, so units of
    several adapters compose (see `keras_adapters.core.composition.Stack`):

    - `transform_input(x)`: the input of `base` ((IA)^3 on inputs);
    - `adjust_linear(x, y)`: `base`'s linear output, before its activation
      (LoRA adds `x @ A @ B`; (IA)^3 scales outputs);
    - `transform_output(y)`: the site's output (bottleneck adapters);
    - `replaces_base`: the unit *is* a replacement of `base` (a per-adapter
      copy of a layer norm that the method trains).

    Calling a unit on its own computes `base` with this one unit applied.
    Units that can be folded into `base` implement `merge()`, which updates
    `base`'s weights so that `base` alone computes what the unit computed.

    For per-row routing (`keras_adapters.core.composition.Route`) a unit class
    names a `RoutedUnits` subclass in `routed`: it stacks the units of
    several adapters at one site and applies, to each row, that row's unit.
    """

    mergeable = False
    replaces_base = False
    #: The `RoutedUnits` class that applies units of this class per row.
    routed = None

    def route_key(self):
        """Units with equal keys are stacked into one `routed` step."""
        return type(self)

    def __init__(self, base, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "base", base)  # owned by the site, not tracked here

    def call(self, inputs, training=None):
        x = self.transform_input(inputs, training=training)
        y = apply_linear(
            self.base, x, lambda y: self.adjust_linear(x, y, training=training), training
        )
        return self.transform_output(y, training=training)

    def adapter_weights(self):
        """This unit's own weights (never the wrapped layer's)."""
        return list(self.weights)

    def keyed_weights(self, scope):
        """{name relative to the unit: variable}; `scope` is the path the
        unit was built under (its variables' paths start with it)."""
        prefix = f"{scope}/{self.name}/"
        return {w.path[len(prefix):]: w for w in self.weights}

    def merge(self):
        raise ValueError(
            f"{type(self).__name__} cannot be merged into the base weights."
        )

    def compute_output_shape(self, input_shape):
        if self.base is None:
            return input_shape
        return self.base.compute_output_shape(input_shape)


class InputEndUnit(WrappedLayer):
    """A unit at the backbone's input end (virtual tokens, a decoder's cache
    prefix): the model reads its weights where it builds the input, so as a
    layer it passes its input through."""

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


class RoutedUnits(UnitHooks):
    """Units of several adapters at one site, each row computing its own.

    Each row gets exactly what its own unit computes: sizes that differ are
    zero-padded to the largest, and rows of adapters without a unit at the
    site gather one shared identity entry (zero update, unit scale, the base
    layer norm). The stacks are built from the units' variables on every
    call, or once for serving (`stored_stacks`).

    Args:
        units: one entry per routed adapter: its unit at this site, or
            `None`; all units present share one `route_key`.
        ids: int32 `[batch]`, each row's index into `units`.
        base: the site's original layer.
        key: names this group of units at this site (see `stored_stacks`).

    Subclasses implement the hooks of `WrappedLayer` they need, on batches.
    """

    replaces_base = False

    def __init__(self, units, ids, base, key=""):
        present = [u for u in units if u is not None]
        if len(present) < len(units):
            # Stack only the units there are, plus one identity entry (`None`)
            # that rows of the other adapters gather: no per-adapter padding.
            local = [present.index(u) if u is not None else len(present) for u in units]
            ids = ops.take(ops.convert_to_tensor(local, "int32"), ids, axis=0)
            present.append(None)
        self.units = present
        self.ids = ids
        self.base = base
        self.key = key
        self.first = present[0]

    def rows(self, values, dtype, role):
        """`values()` (one tensor per adapter, same shape) stacked and gathered per row."""
        return gather_rows(values, self.ids, dtype, key=f"{self.key}/{role}")


_STORED_STACKS = []


@contextlib.contextmanager
def stored_stacks(store):
    """Stack each routed weight once, into a variable kept in `store`.

    Without it, a routed graph stacks the adapters' variables on every call
    (always current, what `model.predict` wants). For serving, the stacks
    are computed once from the weights' current values and stored as
    variables (`store`: dict key -> `tf.Variable`): the graph then reads one
    `[adapters, ...]` variable per weight instead of one per adapter, and the
    per-adapter variables need not be saved.
    """
    _STORED_STACKS.append(store)
    try:
        yield store
    finally:
        _STORED_STACKS.pop()


def _stack(values):
    values = values() if callable(values) else values
    return ops.stack([ops.convert_to_tensor(v.value if isinstance(v, keras.Variable) else v) for v in values])


def gather_rows(values, ids, dtype, key=None):
    """`values` (one tensor per adapter, same shape; or a function giving
    them) stacked and gathered by `ids`; stacked once when `key` is given
    inside `stored_stacks`."""
    if _STORED_STACKS and key is not None:
        store = _STORED_STACKS[-1]
        if key not in store:
            with tf.init_scope():  # from the current values, outside any trace
                name = re.sub(r"[^A-Za-z0-9_.]", "_", key)
                store[key] = tf.Variable(_stack(values), trainable=False, name=name)
        stacked = store[key]
    else:
        stacked = _stack(values)
    return ops.take(ops.cast(stacked, dtype), ids, axis=0)


def pad_axis(tensor, size, axis):
    """`tensor` zero-padded at the end of `axis` to `size`."""
    tensor = ops.convert_to_tensor(tensor)
    missing = size - int(tensor.shape[axis])
    if not missing:
        return tensor
    widths = [[0, 0] for _ in tensor.shape]
    widths[axis][1] = missing
    return ops.pad(tensor, widths)


def per_row(values, like):
    """`values` ([batch, *d]) shaped to broadcast against `like` ([batch, ..., *d])."""
    extra = len(like.shape) - len(values.shape)
    return ops.reshape(values, (-1,) + (1,) * extra + tuple(values.shape[1:]))


class RoutedLayerNorm(RoutedUnits):
    """Per-adapter layer-norm copies (`TrainableCopy`), the base norm for rows
    whose adapter has none."""

    replaces_base = True

    def __call__(self, x):
        layers = [u.layer if u is not None else self.base for u in self.units]
        # float32, as the layer's own variables enter the normalisation.
        gamma = self.rows(lambda: [layer.gamma for layer in layers], "float32", "gamma")
        beta = self.rows(lambda: [layer.beta for layer in layers], "float32", "beta")
        outputs = ops.layer_normalization(
            x, per_row(gamma, x), per_row(beta, x), axis=self.base.axis, epsilon=self.base.epsilon
        )
        return ops.cast(outputs, self.base.compute_dtype)


def _config_of(layer):
    """`layer.get_config()`, or for a layer that keeps none (keras-hub's Gemma
    RMS norm, made with a dtype policy object) its constructor's arguments
    read back from the attributes of the same names."""
    try:
        return layer.get_config()
    except NotImplementedError:
        names = inspect.signature(type(layer).__init__).parameters
        return {n: getattr(layer, n) for n in names if n not in ("self", "kwargs", "name", "dtype") and hasattr(layer, n)}


@keras.saving.register_keras_serializable(package="keras_adapters")
class TrainableCopy(WrappedLayer):
    """A per-adapter copy of an original layer that the method trains.

    Houlsby adapters train the layer norms of the backbone; each named
    adapter gets its own copy (starting from the original weights), so two
    adapters never share a trained weight and the backbone stays unchanged.
    """

    replaces_base = True

    @property
    def routed(self):
        if not isinstance(self.base, keras.layers.LayerNormalization) or not self.base.center or not self.base.scale:
            return None
        return RoutedLayerNorm

    def build(self, input_shape):
        self.layer = type(self.base).from_config({**_config_of(self.base), "name": self.base.name, "dtype": self.dtype_policy})
        self.layer.build(input_shape)
        for target, source in zip(self.layer.weights, self.base.weights):
            target.assign(source)

    def call(self, inputs, training=None):
        if isinstance(self.layer, keras.layers.LayerNormalization):
            return per_example.layer_norm(self.layer, inputs)
        return self.layer(inputs)

    def keyed_weights(self, scope):
        prefix = f"{scope}/{self.name}/{self.layer.name}/"
        return {w.path[len(prefix):]: w for w in self.weights}


def apply_linear(base, x, adjust, training=None):
    """`base(x)` with `adjust` applied to its linear part (before activation).

    A `Dense` or plain `EinsumDense` projection is computed here, as one 2-D
    product (`_linear_2d`), so that the adjustment goes in before its
    activation; other layers are called as they are (`adjust=None`: no
    adjustment).
    """
    if base is None:
        return x if adjust is None else adjust(x)
    pre = _linear_2d(base, x)
    if pre is None and adjust is None:
        return base(x, training=training) if _takes_training(base) else base(x)
    adjust = adjust or (lambda y: y)
    activation = getattr(base, "activation", None)
    linear = activation is None or activation is keras.activations.linear
    if pre is None:
        if linear:
            return adjust(base(x))
        pre = ops.matmul(x, ops.cast(base.kernel, x.dtype))
        if base.use_bias:
            pre = ops.add(pre, ops.cast(base.bias, x.dtype))
    return adjust(pre) if linear else activation(adjust(pre))


def _linear_2d(base, x):
    """The linear part of a `Dense` or plain `EinsumDense` projection, computed
    as one 2-D `MatMul` -> `BiasAdd` on `[tokens, inputs]` and shaped back
    (None for other layers). Einsum runs it through transposes and a weight
    reorder, and its gradient through more (BENCHMARKS.md "0.28: fewer and
    cheaper ops in the step")."""
    if not isinstance(base, (keras.layers.Dense, keras.layers.EinsumDense)):
        return None
    if getattr(base, "quantization_mode", None):
        return None  # its kernel is stored quantized; only its own call applies the scales
    try:
        n_in, axes = _kernel_layout(base)
    except ValueError:
        return None
    in_shape, out_shape = kernel_split(base)
    bias = getattr(base, "bias", None)
    if axes != tuple(range(len(axes))) or (bias is not None and tuple(bias.shape) != out_shape):
        return None  # a reordered kernel, or a bias over part of the outputs
    if any(got is not None and got != want for got, want in zip(x.shape[len(x.shape) - n_in :], in_shape)):
        return None  # let the layer's own call say what is wrong
    inputs, outputs = math.prod(in_shape), math.prod(out_shape)
    x = ops.cast(x, base.compute_dtype)  # as `base(x)` would
    lead = ops.shape(x)[: len(x.shape) - n_in]
    y = tf.matmul(tf.reshape(x, [-1, inputs]), tf.reshape(ops.cast(base.kernel, x.dtype), [inputs, outputs]))
    if bias is not None:
        y = tf.nn.bias_add(y, tf.reshape(ops.cast(bias, y.dtype), [outputs]))
    return ops.reshape(y, (*lead, *out_shape))


def _takes_training(layer):
    return isinstance(layer, (keras.layers.Dropout,))


def kernel_split(layer):
    """Split a projection's kernel shape into (input dims, output dims), in
    the order the kernel's axes take in `canonical_kernel` (see `kernel_axes`).

    Works for `Dense` and for the `EinsumDense` projections of keras-hub
    attention (`abc,cde->abde`, `abcd,cde->abe`, Gemma's `btd,ndh->btnh`):
    the kernel's contracted dims meet the input's trailing dims, the rest
    become the output's trailing dims. Anything else is refused, since a
    low-rank or scaling update on it would have no clear meaning.
    """
    kernel_shape = tuple(int(d) for d in layer.kernel.shape)
    n_in, axes = _kernel_layout(layer)
    shape = tuple(kernel_shape[a] for a in axes)
    return shape[:n_in], shape[n_in:]


def kernel_axes(layer):
    """The kernel's axes in (input dims..., output dims...) order: `(0, 1, ...)`
    but for kernels that keep an output dim first (Gemma's query, key and
    value kernels `[heads, hidden, head_dim]` give `(1, 0, 2)`)."""
    return _kernel_layout(layer)[1]


def canonical_kernel(layer):
    """`layer.kernel` in float32 with its axes in `kernel_axes` order (input dims first)."""
    kernel = ops.cast(layer.kernel, "float32")
    axes = kernel_axes(layer)
    return kernel if axes == tuple(range(len(axes))) else ops.transpose(kernel, axes)


def layout_kernel(layer, kernel):
    """A kernel in `canonical_kernel` order (or flat `[inputs, outputs]`) laid out as `layer.kernel` is."""
    axes = kernel_axes(layer)
    in_shape, out_shape = kernel_split(layer)
    kernel = ops.reshape(kernel, (*in_shape, *out_shape))
    if axes == tuple(range(len(axes))):
        return kernel
    return ops.transpose(kernel, tuple(axes.index(i) for i in range(len(axes))))


def _kernel_layout(layer):
    """(number of input dims, `kernel_axes`) of a `Dense` or plain `EinsumDense` projection."""
    if isinstance(layer, keras.layers.Dense):
        return 1, (0, 1)
    if isinstance(layer, keras.layers.EinsumDense):
        inputs, rest = layer.equation.replace(" ", "").split(",")
        kernel, output = rest.split("->")
        contracted = "".join(c for c in inputs if c in kernel)
        free = "".join(c for c in kernel if c not in inputs)
        batch = inputs[: len(inputs) - len(contracted)]
        if contracted and inputs.endswith(contracted) and output == batch + free and len(set(kernel)) == len(kernel):
            return len(contracted), tuple(kernel.index(c) for c in contracted + free)
        raise ValueError(
            f"Layer {layer.name!r} uses the einsum equation {layer.equation!r}, "
            "which is not a plain projection (input trailing dims x kernel "
            "dims into output trailing dims); adapters cannot target it."
        )
    raise ValueError(
        f"Layer {layer.name!r} is a {type(layer).__name__}; only Dense and "
        "EinsumDense projections can be targeted by this method."
    )
