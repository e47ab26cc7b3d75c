"""The one mechanism that puts adapter methods into a keras-hub backbone.

keras-hub's `TransformerEncoder` calls its sublayers through attributes
(`self._self_attention_dropout(x)`, `self._self_attention_layer._query_dense(x)`
inside `MultiHeadAttention`, ...). A *site* names one of those attributes.
Injection replaces the layer at a site by a wrapper layer that calls the
original and adds the method's computation, so:

- the encoder's own code, weights and functional graph stay untouched (no
  copy of keras-hub code to keep in sync; only the attribute names below are
  relied on, and they are checked, with a clear error, before anything
  changes);
- the original weights stay the same variable objects: they are frozen at the
  variable level (`variable.trainable = False`), so a method can leave chosen
  ones trainable (Houlsby's layer norms) without unfreezing their parents;
- the wrapper is tracked in place of the original (same position in the
  parent's sublayer list), so Keras saving, `model.weights` and the optimizer
  see it like any sublayer.

Every method goes through `inject_adapters`; a method only says which sites it
wraps and with what (see `keras_adapters.methods.base.AdapterConfig`).
"""

import contextlib

import keras

from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import kernel_split
from keras_adapters.methods.registry import get_adapter_config

#: Site name -> attribute path from a `TransformerEncoder`.
SITES = {
    "self_attention_dropout": ("_self_attention_dropout",),
    "feedforward_dropout": ("_feedforward_dropout",),
    "query": ("_self_attention_layer", "_query_dense"),
    "key": ("_self_attention_layer", "_key_dense"),
    "value": ("_self_attention_layer", "_value_dense"),
    "attention_output": ("_self_attention_layer", "_output_dense"),
    "feedforward_intermediate_dense": ("_feedforward_intermediate_dense",),
    "feedforward_output_dense": ("_feedforward_output_dense",),
    "self_attention_layer_norm": ("_self_attention_layer_norm",),
    "feedforward_layer_norm": ("_feedforward_layer_norm",),
}

_RECORD = "_keras_adapters_injection"


class Injection:
    """What `inject_adapters` did to a backbone.

    Attributes:
        config: the `AdapterConfig` injected.
        wrappers: dict of site path (`"transformer_layer_0/query"`) to the
            wrapper layer now at that site.
    """

    def __init__(self, config, wrappers):
        self.config = config
        self.wrappers = wrappers


def encoder_layers(backbone):
    """The backbone's `TransformerEncoder` layers, in order."""
    from keras_hub.layers import TransformerEncoder

    encoders = [
        layer
        for layer in backbone.layers
        if isinstance(layer, TransformerEncoder)
    ]
    if not encoders:
        raise ValueError(
            f"{type(backbone).__name__} has no keras_hub TransformerEncoder "
            "layers; keras-adapters supports BERT-style keras-hub backbones "
            "(e.g. BertBackbone)."
        )
    return encoders


def get_injection(backbone):
    """The `Injection` recorded on `backbone`, or `None`."""
    return getattr(backbone, _RECORD, None)


def resolve_site(encoder, site):
    """(parent layer, attribute name) of `site` inside `encoder`."""
    obj = encoder
    *parents, attr = SITES[site]
    for name in parents:
        obj = getattr(obj, name, None)
    if obj is None or not isinstance(getattr(obj, attr, None), keras.layers.Layer):
        raise RuntimeError(
            f"{encoder.name} has no sublayer at {'.'.join(SITES[site])}: this "
            "keras-hub version lays out TransformerEncoder differently from "
            "the versions keras-adapters supports (see setup.cfg)."
        )
    return obj, attr


def replace_sublayer(parent, attr, new):
    """Put `new` where `parent.<attr>` was, tracked in the old one's place."""
    old = getattr(parent, attr)
    tracker = parent._tracker
    was_locked = tracker.locked
    tracker.unlock()  # built layers refuse new sublayers unless unlocked
    try:
        if tracker.is_in_store("layers", old):
            tracker.replace_tracked_value("layers", old, new)
        setattr(parent, attr, new)
    finally:
        if was_locked:
            tracker.lock()


def _input_shape(wrapper, site, hidden_dim):
    if isinstance(wrapper.base, keras.layers.Dropout):
        return (None, None, hidden_dim)
    in_shape, _ = kernel_split(wrapper.base)
    return (None, None, *in_shape)


def inject_adapters(backbone, adapter):
    """Insert an adapter method into `backbone`, in place, and freeze the rest.

    Args:
        backbone: a built keras-hub backbone made of `TransformerEncoder`
            layers (e.g. `keras_hub.models.BertBackbone`).
        adapter: a method name (`"houlsby"`, `"lora"`, ...), a config dict or
            an `AdapterConfig`.

    Returns:
        The `Injection` record (also kept on the backbone).

    Example:
    ```python
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    inject_adapters(backbone, LoRAConfig(rank=8))
    ```
    """
    config = get_adapter_config(adapter)
    if get_injection(backbone) is not None:
        raise ValueError(
            f"{backbone.name} already has a {get_injection(backbone).config.method!r} "
            "adapter; load a fresh backbone to add another method."
        )
    encoders = encoder_layers(backbone)
    hidden_dim = int(backbone.hidden_dim)
    targets = [
        (encoder, site)
        for encoder in encoders
        if config.applies_to_layer(encoder.name)
        for site in config.sites()
    ]
    if config.sites() and not targets:
        raise ValueError(
            f"target_layers={config.target_layers!r} matches none of the "
            f"encoder layers {[e.name for e in encoders]}."
        )
    # Check every site before changing anything, so a failure leaves the
    # backbone as it was.
    resolved = [(e, s, *resolve_site(e, s)) for e, s in targets]
    unfrozen = [
        resolve_site(e, s)
        for e in encoders
        if config.applies_to_layer(e.name)
        for s in config.trainable_sites
    ]

    if config.freezes_backbone:
        for variable in backbone.weights:
            variable.trainable = False
    for parent, attr in unfrozen:
        for variable in getattr(parent, attr).weights:
            variable.trainable = True

    wrappers = {}
    for encoder, site, parent, attr in resolved:
        base = getattr(parent, attr)
        wrapper = config.wrap(
            site, base, dtype=backbone.dtype_policy, hidden_dim=hidden_dim
        )
        # Build under the parent's name scope, so variable paths read like the
        # originals' (transformer_layer_0/self_attention_layer/query/lora_a).
        with contextlib.ExitStack() as scopes:
            for name in parent.path.split("/"):
                scopes.enter_context(keras.name_scope(name))
            wrapper.build(_input_shape(wrapper, site, hidden_dim))
        replace_sublayer(parent, attr, wrapper)
        wrappers[f"{encoder.name}/{site}"] = wrapper

    injection = Injection(config, wrappers)
    object.__setattr__(backbone, _RECORD, injection)  # not a tracked attribute
    return injection


def merge_adapters(backbone):
    """Fold mergeable wrappers into their base weights and remove them.

    After this, the backbone computes what it computed with the adapter, with
    no adapter layers left. Raises if any wrapper cannot be merged (bottleneck
    adapters are non-linear), before changing anything.
    """
    injection = get_injection(backbone)
    if injection is None:
        raise ValueError(f"{backbone.name} has no adapter to merge.")
    unmergeable = sorted(
        {type(w).__name__ for w in injection.wrappers.values() if not w.mergeable}
    )
    if unmergeable:
        raise ValueError(
            f"The {injection.config.method!r} adapter ({', '.join(unmergeable)}) "
            "is not linear in the base weights and cannot be merged; export it "
            "as it is."
        )
    for path, wrapper in injection.wrappers.items():
        encoder_name, site = path.split("/", 1)
        parent, attr = resolve_site(backbone.get_layer(encoder_name), site)
        wrapper.merge()
        replace_sublayer(parent, attr, wrapper.base)
    object.__setattr__(backbone, _RECORD, None)
    return injection.config


def adapter_weights(backbone):
    """The weights owned by injected wrappers (not the wrapped originals)."""
    injection = get_injection(backbone)
    if injection is None:
        return []
    return [w for wrapper in injection.wrappers.values() for w in wrapper.adapter_weights()]


__all__ = [
    "SITES",
    "Injection",
    "WrappedLayer",
    "adapter_weights",
    "encoder_layers",
    "get_injection",
    "inject_adapters",
    "merge_adapters",
]
