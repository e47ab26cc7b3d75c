"""What every adapter method is made of: a config dataclass and wrapper layers.

A method never touches the backbone itself. Its config says *where* it acts
(`sites`: named places inside a keras-hub `TransformerEncoder`, see
`keras_adapters.injection.SITES`), *how* (`wrap`: a Keras layer that replaces
the layer at that site and calls it), and which original weights stay
trainable. `keras_adapters.injection.inject_adapters` does the rest, the same
way for every method.
"""

import dataclasses
import re
from typing import ClassVar

import keras


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
    #: Learning rate that works for this method with AdamW (overridable).
    default_learning_rate: ClassVar[float] = 1e-3

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

    def sites(self):
        """The site names this config wraps, in a fixed order."""
        return tuple(self.default_sites)

    def applies_to_layer(self, encoder_name):
        return re.fullmatch(self.target_layers, encoder_name) is not None

    def wrap(self, site, base, *, dtype, hidden_dim):
        """Return the layer that replaces `base` at `site`.

        Args:
            site: the site name (a key of `injection.SITES`).
            base: the original layer at that site.
            dtype: the backbone's dtype policy, for the new layer.
            hidden_dim: the backbone's hidden size.
        """
        raise NotImplementedError

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


def check_sites(owner, name, value, allowed):
    """A non-empty tuple of site names from `allowed` (a lone string is one)."""
    value = (value,) if isinstance(value, str) else tuple(value)
    if not value or any(v not in allowed for v in value):
        raise ValueError(
            f"{owner}.{name} {list(value)} must be a non-empty list of {list(allowed)}."
        )
    return value


class WrappedLayer(keras.layers.Layer):
    """A layer that stands in for a backbone sublayer and calls it.

    `base` is the original (frozen) layer; the wrapper adds the method's
    computation around it. Wrappers that can be folded into `base` implement
    `merge()`, which updates `base`'s weights so that `base` alone computes
    what the wrapper computed.

    Wrappers are created by `inject_adapters` and are not deserialized on
    their own: a model's config records the adapter config and injection
    recreates them, so `get_config` here is informative.
    """

    mergeable = False

    def __init__(self, base, **kwargs):
        super().__init__(**kwargs)
        self.base = base

    def adapter_weights(self):
        """This wrapper's own weights (not the wrapped layer's)."""
        base_ids = {id(w) for w in self.base.weights} if self.base else set()
        return [w for w in self.weights if id(w) not in base_ids]

    def merge(self):
        raise ValueError(
            f"{type(self).__name__} cannot be merged into the base weights."
        )

    def compute_output_shape(self, input_shape):
        if self.base is None:
            return input_shape
        return self.base.compute_output_shape(input_shape)


def kernel_split(layer):
    """Split a projection's kernel shape into (input dims, output dims).

    Works for `Dense` and for the `EinsumDense` projections of keras-hub
    attention (`abc,cde->abde`, `abcd,cde->abe`): the kernel's leading dims
    contract with the input's trailing dims, the rest become the output's
    trailing dims. Anything else is refused, since a low-rank or scaling
    update on it would have no clear meaning.
    """
    kernel_shape = tuple(int(d) for d in layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return kernel_shape[:1], kernel_shape[1:]
    if isinstance(layer, keras.layers.EinsumDense):
        inputs, rest = layer.equation.replace(" ", "").split(",")
        kernel, output = rest.split("->")
        n_in = sum(1 for c in kernel if c in inputs)
        if (
            n_in
            and inputs.endswith(kernel[:n_in])
            and output == inputs[: len(inputs) - n_in] + kernel[n_in:]
        ):
            return kernel_shape[:n_in], kernel_shape[n_in:]
        raise ValueError(
            f"Layer {layer.name!r} uses the einsum equation {layer.equation!r}, "
            "which is not a plain projection (input trailing dims x kernel "
            "leading dims); adapters cannot target it."
        )
    raise ValueError(
        f"Layer {layer.name!r} is a {type(layer).__name__}; only Dense and "
        "EinsumDense projections can be targeted by this method."
    )
