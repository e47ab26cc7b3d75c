"""The one mechanism that puts named adapters into a keras-hub backbone.

keras-hub's transformer layers (BERT's `TransformerEncoder`, Llama's
`LlamaTransformerDecoder`, ...) call their sublayers through attributes
(`self._self_attention_dropout(x)`, `self._self_attention_layer._query_dense(x)`
inside the attention layer, ...). A *site* names one of those attributes;
each backbone family says where its sites are (`keras_adapters.backbones.family`).
The first adapter that acts at a site replaces the layer there by an
`AdapterSite`, which keeps the original layer and, per named adapter, that
adapter's *unit* (see `keras_adapters.methods.base.WrappedLayer`). When
called, the site runs the original layer with the units of the *active*
adapters (a name or a composition block, `keras_adapters.core.composition`), so:

- the encoder's own code, weights and functional graph stay untouched (no
  copy of keras-hub code to keep in sync; only the attribute names below are
  relied on, and they are checked, with a clear error, before anything
  changes);
- the original weights stay the same variable objects, frozen at the
  variable level; each adapter's weights are its own, so one adapter trains
  while the others and the backbone stay as they are;
- the site is tracked in place of the original (same position in the
  parent's sublayer list), so Keras saving, `model.weights` and the optimizer
  see it like any sublayer.

Which adapters are active is read when the model is traced: after changing
it, Keras' traced functions must be reset (the model does this).
"""

import contextlib
import dataclasses
import re

import keras
from keras import ops

from keras_adapters.backbones import bert
from keras_adapters.backbones.family import families
from keras_adapters.backbones.family import family_of
from keras_adapters.backbones.family import family_of_layer
from keras_adapters.core import composition
from keras_adapters.core.fusion import FusionConfig
from keras_adapters.core.fusion import FusionLayer
from keras_adapters.methods.base import PROJECTION_SITES
from keras_adapters.methods.base import Shared
from keras_adapters.methods.base import UnitHooks
from keras_adapters.methods.base import apply_linear
from keras_adapters.methods.base import kernel_split
from keras_adapters.methods.prompt import EMBEDDING_LAYERS
from keras_adapters.methods.prompt import embedding_output
from keras_adapters.methods.prompt import embed_with_prompts
from keras_adapters.methods.prompt import strip_prompts
from keras_adapters.methods.registry import get_adapter_config

#: BERT's sites (`keras_adapters.backbones.bert.SITES`; each family has its own).
SITES = bert.SITES

#: The sites whose layers multiply matrices: what an autocast precision
#: (`keras_adapters.core.precision`) computes in bf16/fp16. The attention
#: layer itself is one (its query-key and probability-value products).
MATMUL_SITES = ("self_attention", *PROJECTION_SITES)

#: The one site of the backbone itself: the embedding output, what the first
#: encoder layer receives (where input-end adapters such as prompts act).
INPUT_SITE = "embedding_output"
_INPUT_KEY = f"embeddings/{INPUT_SITE}"
_INPUT_ATTR = "_keras_adapters_input_site"

_STATE = "_keras_adapters_state"


class AdapterState:
    """What a backbone carries: its named adapters, fusions and the active spec.

    Attributes:
        configs: dict name -> `AdapterConfig`, in the order added.
        fusions: dict fusion name -> (`Fuse`, `FusionConfig`).
        active: the active spec (name or block), or `None` (plain backbone).
        sites: dict `"transformer_layer_0/query"` -> `AdapterSite`.
        original_weights: the backbone's own variables.
        row_ids: while a `Route` runs (see `routing`), each row's adapter
            index (int32 `[batch]`).
    """

    def __init__(self, backbone):
        self.configs = {}
        self.fusions = {}
        self.active = None
        self.sites = {}
        self.original_weights = list(backbone.weights)
        self.row_ids = None


@contextlib.contextmanager
def routing(backbone, ids):
    """Let the sites see each row's adapter index while the backbone runs.

    The sites are called by keras-hub's encoder with the hidden states only,
    so the ids travel beside them, for the duration of one call.
    """
    state = get_state(backbone)
    state.row_ids = ops.cast(ids, "int32")
    try:
        yield
    finally:
        state.row_ids = None


def get_state(backbone, create=False):
    state = getattr(backbone, _STATE, None)
    if state is None and create:
        state = AdapterState(backbone)
        object.__setattr__(backbone, _STATE, state)  # not a tracked attribute
    return state


def encoder_layers(backbone):
    """The backbone's transformer layers (encoder or decoder), in order."""
    return family_of(backbone).layers(backbone)


def resolve_site(encoder, site):
    """(parent layer, attribute name) of `site` inside the transformer layer `encoder`."""
    family = family_of_layer(encoder)
    path = family.sites.get(family.where(site)) if family is not None else None
    if path is None:
        raise ValueError(
            f"{encoder.name} ({family.name if family else type(encoder).__name__} layer) has no site {site!r}; "
            f"its sites are {family.site_names() if family else []}."
        )
    obj = encoder
    *parents, attr = path
    for name in parents:
        obj = getattr(obj, name, None)
        if isinstance(obj, AdapterSite):  # e.g. the attention layer, itself a site
            obj = obj.base
    if obj is None or not isinstance(getattr(obj, attr, None), keras.layers.Layer):
        raise RuntimeError(
            f"{encoder.name} has no sublayer at {'.'.join(path)}: this "
            f"keras-hub version lays out {type(encoder).__name__} differently from "
            "the versions keras-adapters supports (see setup.cfg)."
        )
    return obj, attr


def matmul_layers(encoder):
    """The layers of `encoder` at `MATMUL_SITES`, and the attention
    probabilities' dropout (so the probability-value product gets both its
    inputs in the low dtype)."""
    sites = (*MATMUL_SITES, "attention_probabilities_dropout")
    layers = [getattr(*resolve_site(encoder, site)) for site in sites]
    return [layer.base if isinstance(layer, AdapterSite) else layer for layer in layers]


@contextlib.contextmanager
def unlocked(layer):
    """Built layers refuse new sublayers unless their tracker is unlocked."""
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            tracker.lock()


def replace_sublayer(parent, attr, new):
    """Put `new` where `parent.<attr>` was, tracked in the old one's place."""
    old = getattr(parent, attr)
    with unlocked(parent):
        if parent._tracker.is_in_store("layers", old):
            parent._tracker.replace_tracked_value("layers", old, new)
        setattr(parent, attr, new)


def _label(site, base):
    """How a site's units are named (the names adapter folders key by)."""
    return site.replace("dropout", "adapter") if isinstance(base, keras.layers.Dropout) else base.name


@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterSite(keras.layers.Layer):
    """Stands where a backbone sublayer was; runs it with the active units.

    Args:
        base: the original layer at the site.
        site: the site name (a key of `SITES`).
        scope: the parent layer's path (adapter weights are keyed under it).

    Units are in `self.units[adapter_name]`, fusion layers in
    `self.fusion_layers[fusion_name]`. Created by `add_adapter`, never on
    its own; `get_config` is informative.
    """

    def __init__(self, base, site, scope, **kwargs):
        super().__init__(name=base.name, dtype=base.dtype_policy, **kwargs)
        self.base = base
        self.site = site
        self.scope = scope
        self.label = _label(site, base)
        self.units = {}
        self.fusion_layers = {}
        object.__setattr__(self, "state", None)
        self.built = True

    def call(self, inputs, training=None):
        spec = self.state.active if self.state is not None else None
        if spec is None:
            return apply_linear(self.base, inputs, None, training)
        return self._run(spec, inputs, training)

    def _run(self, spec, x, training):
        if isinstance(spec, composition.Route):
            return self._route(spec, x, training)
        if isinstance(spec, composition.Parallel):
            chunks = ops.split(x, len(spec), axis=0)
            return ops.concatenate(
                [self._run(c, chunk, training) for c, chunk in zip(spec, chunks)], axis=0
            )
        if isinstance(spec, composition.Average):
            outputs = [self._run(c, x, training) for c in spec]
            return sum(ops.multiply(o, ops.cast(w, o.dtype)) for w, o in zip(spec.weights, outputs))
        items = spec.children if isinstance(spec, composition.Stack) else (spec,)
        return self._stack(items, x, training)

    def _stack(self, items, x, training):
        units = []
        for item in items:
            if isinstance(item, composition.Fuse):
                members = [self.units[n] for n in item.children if n in self.units]
                if members and members[0].replaces_base:
                    units.append(_MeanOf(members))
                elif members:
                    units.append(_FuseStep(members, self.fusion_layers.get(item.name)))
            elif item in self.units:
                units.append(self.units[item])
        return self._compose(units, x, training)

    def _route(self, spec, x, training):
        """Each row through its own adapter's units (see `Route`)."""
        ids = self.state.row_ids
        if ids is None:
            raise ValueError("A Route is active but the inputs have no 'adapter_id' (one int32 per row).")
        groups = {}
        for i, name in enumerate(spec.children):
            unit = self.units.get(name)
            if unit is not None:
                groups.setdefault(unit.route_key(), [None] * len(spec))[i] = unit
        steps = []
        for index, group in enumerate(groups.values()):
            first = next(u for u in group if u is not None)
            if first.routed is None:
                raise ValueError(
                    f"{type(first).__name__} units cannot be routed per row; serve that adapter "
                    "through its own signature."
                )
            key = f"{self.scope}/{self.label}/{'+'.join(spec.children)}/{index}"
            steps.append(first.routed(group, ids, self.base, key))
        return self._compose(steps, x, training)

    def _compose(self, units, x, training):
        """The base layer with `units` applied through their hooks, in order;
        a unit that replaces the base layer is called instead of it."""
        replacement = None
        for unit in [u for u in units if u.replaces_base]:
            replacement = unit
        units = [u for u in units if not u.replaces_base]
        for unit in units:
            x = unit.transform_input(x, training=training)
        adjusting = [u for u in units if _adjusts_linear(u)]
        if replacement is not None:
            y = replacement(x)
        elif adjusting:

            def adjust(y):
                for unit in adjusting:
                    y = unit.adjust_linear(x, y, training=training)
                return y

            y = apply_linear(self.base, x, adjust, training)
        else:
            y = apply_linear(self.base, x, None, training)
        for unit in units:
            y = unit.transform_output(y, training=training)
        return y

    def compute_output_shape(self, input_shape):
        return self.base.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "site": self.site, "units": sorted(self.units)}


@keras.saving.register_keras_serializable(package="keras_adapters")
class AttentionSite(AdapterSite):
    """The site of a whole self-attention layer, called as keras-hub's
    encoder calls it: its units (prefix tuning) widen the attention mask for
    the keys and values their units at the projections put in front."""

    def call(self, query, value, key=None, attention_mask=None, training=None, **kwargs):
        spec = self.state.active if self.state is not None else None
        names = [] if spec is None else [spec] if isinstance(spec, str) else list(getattr(spec, "children", ()))
        for name in names:
            if isinstance(name, str) and name in self.units:
                attention_mask = self.units[name].extend_mask(attention_mask)
        return self.base(query=query, value=value, key=key, attention_mask=attention_mask, training=training, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.base.compute_output_shape(*args, **kwargs)


def _adjusts_linear(unit):
    hook = getattr(type(unit), "adjust_linear", None)
    return hook not in (None, UnitHooks.adjust_linear)


class _MeanOf:
    """Stands for several replacements of the base layer: their mean."""

    replaces_base = True

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x):
        outputs = [layer(x) for layer in self.layers]
        return sum(outputs) / float(len(outputs))


class _FuseStep:
    """A `Fuse` at one site: the fusion layer over its members' residuals,
    or their average where the fusion has no layer (a single member)."""

    replaces_base = False

    def __init__(self, members, fusion_layer):
        self.members = members
        self.fusion_layer = fusion_layer

    def transform_input(self, x, training=None):
        return x

    def transform_output(self, y, training=None):
        residuals = [m.residual(y) for m in self.members]
        if self.fusion_layer is None:
            return ops.add(y, sum(residuals) / float(len(residuals)))
        return self.fusion_layer(y, ops.stack(residuals, axis=-2), training=training)


@keras.saving.register_keras_serializable(package="keras_adapters")
class InputSite(keras.layers.Layer):
    """Holds the input-end units (one per adapter) of a backbone.

    The backbone's functional graph cannot take a layer in the middle, so
    this holder is tracked as an attribute of the backbone (its weights are
    the backbone's, for Keras and the optimizer) and `run_backbone` calls
    its units between the embeddings and the first encoder layer.
    """

    def __init__(self, **kwargs):
        super().__init__(name=INPUT_SITE, **kwargs)
        self.site = INPUT_SITE
        self.scope = "embeddings"
        self.label = INPUT_SITE
        self.units = {}
        self.fusion_layers = {}
        self.built = True

    def call(self, inputs):
        return inputs


def _input_site(state, backbone):
    if _INPUT_KEY not in state.sites:
        family = family_of(backbone)
        missing = [a for a in family.input_layers if not hasattr(backbone, a)]
        if missing:
            raise ValueError(
                f"{type(backbone).__name__} has no {', '.join(missing)}: input-end adapters (prompt tuning) "
                f"need a backbone with the layers of keras-hub's {family.name} models."
            )
        holder = InputSite()
        with unlocked(backbone):
            setattr(backbone, _INPUT_ATTR, holder)
        state.sites[_INPUT_KEY] = holder
    return state.sites[_INPUT_KEY]


def input_units(backbone):
    """The active adapters' input-end units (prompts), in the order the spec applies them."""
    state = get_state(backbone)
    return _input_units(state) if state is not None else []


def _input_units(state):
    holder = state.sites.get(_INPUT_KEY)
    if holder is None or state.active is None or isinstance(state.active, composition.Route):
        return []
    return [holder.units[n] for n in composition.adapter_names(state.active) if n in holder.units]


def run_backbone(backbone, inputs, training=False):
    """The backbone's outputs with the active adapters, input end included.

    Without an active input-end unit this is `backbone(inputs)`. With one,
    the backbone's own layers run in the order of its graph (embeddings,
    the units, the encoder layers, the pooler), and the virtual tokens are
    taken out of `sequence_output` again.
    """
    state = get_state(backbone)
    units = _input_units(state) if state is not None else []
    if not units:
        return backbone(inputs, training=training)
    x, mask = embed_with_prompts(backbone, inputs, units, training=training)
    for layer in backbone.transformer_layers:
        x = layer(x, padding_mask=mask, training=training)
    # The pooler reads the first position, as BERT's does (a virtual token's, for peft's placement).
    return {"sequence_output": strip_prompts(x, units), "pooled_output": backbone.pooled_dense(x[:, 0, :])}


def frozen_prefix_depth(backbone):
    """How many leading encoder layers the active adapters leave alone.

    A layer counts when no active adapter (or fusion) has a unit at any of
    its sites, none of its own weights trains, and nothing before it does
    (embeddings, input-end units). With dropout off there, those layers'
    outputs depend on the tokens only, so they can be computed once per
    example (`keras_adapters.core.prefix_cache`). 0 when there is nothing to skip.
    """
    state = get_state(backbone)
    if state is None or state.active is None or isinstance(state.active, composition.Route) or _input_units(state):
        return 0
    active = set(composition.adapter_names(state.active)) | {f.name for f in composition.fusions(state.active)}
    embeddings = [w for name in EMBEDDING_LAYERS for w in getattr(backbone, name).weights]
    if any(w.trainable for w in embeddings):
        return 0
    original = {id(w) for w in state.original_weights}
    depth = 0
    for encoder in encoder_layers(backbone):
        sites = [site for key, site in state.sites.items() if key.startswith(f"{encoder.name}/")]
        acting = any(active & (set(site.units) | set(site.fusion_layers)) for site in sites)
        training = any(w.trainable and id(w) in original for w in encoder.weights)
        if acting or training:
            break
        depth += 1
    return depth


def run_prefix(backbone, inputs, depth):
    """The hidden states after the first `depth` encoder layers, dropout off."""
    x = embedding_output(backbone, inputs["token_ids"], inputs["segment_ids"], training=False)
    for layer in backbone.transformer_layers[:depth]:
        x = layer(x, padding_mask=inputs["padding_mask"], training=False)
    return x


def run_from(backbone, hidden, padding_mask, depth, training=False):
    """The backbone's outputs from the hidden states after layer `depth`."""
    x = hidden
    for layer in backbone.transformer_layers[depth:]:
        x = layer(x, padding_mask=padding_mask, training=training)
    return {"sequence_output": x, "pooled_output": backbone.pooled_dense(x[:, 0, :])}


def _input_shape(base, hidden_dim):
    if not isinstance(base, (keras.layers.Dense, keras.layers.EinsumDense)):
        return (None, None, hidden_dim)  # dropout, norms, attention: the hidden states
    in_shape, _ = kernel_split(base)
    return (None, None, *in_shape)


def _site(state, encoder, site):
    """The `AdapterSite` at `site` of `encoder`, put there if needed; an
    aliased site's units live in the holder of the site it acts on."""
    site = family_of_layer(encoder).where(site)
    key = f"{encoder.name}/{site}"
    if key not in state.sites:
        parent, attr = resolve_site(encoder, site)
        kind = AttentionSite if site == "self_attention" else AdapterSite
        new = kind(getattr(parent, attr), site, parent.path)
        object.__setattr__(new, "state", state)
        replace_sublayer(parent, attr, new)
        state.sites[key] = new
    return state.sites[key]


def _build_under(scope, layer, *shapes):
    """Build `layer` so its variables' paths start with `scope`."""
    with contextlib.ExitStack() as scopes:
        for name in scope.split("/"):
            scopes.enter_context(keras.name_scope(name))
        layer.build(*shapes)


def check_name(name, taken):
    """Names become Keras layer names and name scopes: letters, digits, `_.-`."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(
            f"An adapter or fusion name is made of letters, digits, '_', '.' and '-'; got {name!r}."
        )
    if name in taken:
        raise ValueError(f"There is already an adapter or fusion named {name!r}; delete it first or pick another name.")


def add_adapter(backbone, name, method):
    """Add a named adapter's units to `backbone` (in place); not activated.

    Args:
        backbone: a built keras-hub BERT-style backbone.
        name: the adapter's name.
        method: a method name, config dict or `AdapterConfig`.

    Returns:
        dict of `"transformer_layer_0/query"` -> the unit added there.
    """
    config = get_adapter_config(method)
    state = get_state(backbone, create=True)
    check_name(name, set(state.configs) | set(state.fusions))
    full = [n for n, c in state.configs.items() if not c.freezes_backbone]
    if state.configs and (full or not config.freezes_backbone):
        raise ValueError(
            "Full fine-tuning changes the backbone every other adapter relies on, so it must be the "
            f"model's only adapter (the model has {list(state.configs)}; adding {name!r}, "
            f"method {config.method!r})."
        )
    family = family_of(backbone)
    encoders = family.layers(backbone)
    if config.input_end and getattr(config, "placement", "") is None:
        config = dataclasses.replace(config, placement=family.prompt_placements[0])
    _check_family(family, config)
    if config.acts_at_input_end(family):
        return _add_input_end(backbone, state, name, config)
    chosen = [e for e in encoders if config.applies_to_layer(e.name)]
    if config.unit_sites() and not chosen:
        raise ValueError(
            f"target_layers={config.target_layers!r} matches none of the "
            f"encoder layers {[e.name for e in encoders]}."
        )
    # Check every site before changing anything, so a failure leaves the
    # backbone as it was.
    targets = [(e, s) for e in chosen for s in config.unit_sites()]
    for encoder, site in targets:
        resolve_site(encoder, site)
    hidden_dim = int(backbone.hidden_dim)
    added = {}
    shared = Shared()
    for encoder, site in targets:
        holder = _site(state, encoder, site)
        # A unit computes in its site's dtype (they differ under an autocast precision).
        unit = config.for_unit(f"{encoder.name}/{site}").make_unit(
            site, holder.base, dtype=holder.base.dtype_policy, hidden_dim=hidden_dim, shared=shared
        )
        # A unit at an aliased site acts on its layer's output: the hidden states.
        aliased = family.where(site) != site
        shape = (None, None, hidden_dim) if aliased else _input_shape(holder.base, hidden_dim)
        _build_under(f"{holder.scope}/{name}", unit, shape)
        with unlocked(holder):
            holder.units[name] = unit
        for w in unit.weights:
            w.trainable = False
        added[f"{encoder.name}/{site}"] = unit
    state.configs[name] = config
    return added


def _check_family(family, config):
    """Refuse, naming the reason, a method the family's layers cannot take."""
    if config.input_end and not family.input_end:
        raise ValueError(
            f"{config.method!r} adapters act on the input embeddings, which keras-adapters supports on "
            f"{[f.name for f in families() if f.input_end]} layers so far, not on {family.name} layers."
        )
    if getattr(config, "original_ln_before", False) and not family.post_norm:
        raise ValueError(
            f"original_ln_before reads the layer norm after a residual add; {family.name} layers normalise "
            "before their blocks (pre-norm), so there is no such norm: leave original_ln_before off."
        )
    if config.input_end and getattr(config, "placement", None) not in (None, *family.prompt_placements):
        raise ValueError(
            f"{family.name} layers take prompt tokens with placement {' or '.join(map(repr, family.prompt_placements))} "
            f"(decoders have no [CLS]: the virtual tokens go in front of the text), not {config.placement!r}."
        )
    if config.acts_at_input_end(family):
        return
    missing = [s for s in config.unit_sites() if family.where(s) is None]
    if missing:
        raise ValueError(
            f"The {config.method!r} method puts units at {missing}, which {family.name} layers do not have "
            f"(their sites: {family.site_names()})."
        )
    landing = [family.where(s) for s in config.unit_sites()]
    shared = sorted({s for s in landing if landing.count(s) > 1})
    if shared:
        raise ValueError(
            f"On {family.name} layers, the sites {list(config.unit_sites())} of this {config.method!r} adapter "
            f"put two units on {shared}; choose one of the sites acting there."
        )


def _add_input_end(backbone, state, name, config):
    holder = _input_site(state, backbone)
    hidden_dim = int(backbone.hidden_dim)
    shared = Shared()
    family = family_of(backbone)
    if family.cache_shape is not None:  # a decoder's prefix is shaped like its KV cache
        shared.update(cache_shape=family.cache_shape(backbone))
    unit = config.make_unit(INPUT_SITE, backbone, dtype=backbone.dtype_policy, hidden_dim=hidden_dim, shared=shared)
    _build_under(f"{holder.scope}/{name}", unit, (None, None, hidden_dim))
    with unlocked(holder):
        holder.units[name] = unit
    for w in unit.weights:
        w.trainable = False
    state.configs[name] = config
    return {_INPUT_KEY: unit}


def delete_adapter(backbone, name):
    """Remove an adapter's units (and any fusion that uses it)."""
    state = _require(backbone, name)
    for fusion_name, (fuse, _) in list(state.fusions.items()):
        if name in fuse.children:
            delete_fusion(backbone, fusion_name)
    for holder in state.sites.values():
        if name in holder.units:
            with unlocked(holder):
                holder.units.pop(name)
    del state.configs[name]
    _drop_empty_sites(backbone, state)
    if state.active is not None and name in composition.adapter_names(state.active):
        state.active = None


def _drop_empty_sites(backbone, state):
    encoders = {e.name: e for e in encoder_layers(backbone)}
    for key, holder in list(state.sites.items()):
        if not holder.units and not holder.fusion_layers and key == _INPUT_KEY:
            with unlocked(backbone):
                delattr(backbone, _INPUT_ATTR)
            del state.sites[key]
        elif not holder.units and not holder.fusion_layers:
            encoder, site = key.split("/", 1)
            parent, attr = resolve_site(encoders[encoder], site)
            replace_sublayer(parent, attr, holder.base)
            del state.sites[key]


def _require(backbone, name):
    state = get_state(backbone)
    if state is None or name not in state.configs:
        known = [] if state is None else list(state.configs)
        raise ValueError(f"No adapter named {name!r}; the model has {known}.")
    return state


def adapter_config(backbone, name):
    """The `AdapterConfig` adapter `name` was added with."""
    return _require(backbone, name).configs[name]


def add_fusion(backbone, fuse, config=None):
    """Add an AdapterFusion over `fuse`'s adapters (bottleneck methods).

    Returns:
        dict of site path -> the `FusionLayer` added there.
    """
    config = config if isinstance(config, FusionConfig) else FusionConfig(**(config or {}))
    state = get_state(backbone, create=True)
    check_name(fuse.name, set(state.configs) | set(state.fusions))
    for member in fuse.children:
        _require(backbone, member)
        if not state.configs[member].fusable:
            raise ValueError(
                f"AdapterFusion combines bottleneck adapters (houlsby, pfeiffer, compacter); {member!r} is "
                f"{state.configs[member].method!r}. Use Average or Stack for it instead."
            )
    added = {}
    for key, holder in state.sites.items():
        members = [n for n in fuse.children if n in holder.units and not holder.units[n].replaces_base]
        if len(members) < 2:
            continue
        layer = FusionLayer(
            attention_dropout=config.attention_dropout,
            temperature=config.temperature,
            dtype=backbone.dtype_policy,
            name=f"{holder.label}_fusion",
        )
        hidden = (None, None, int(backbone.hidden_dim))
        _build_under(f"{holder.scope}/{fuse.name}", layer, hidden)
        for w in layer.weights:
            w.trainable = False
        with unlocked(holder):
            holder.fusion_layers[fuse.name] = layer
        added[key] = layer
    if not added:
        raise ValueError(f"The adapters of {fuse!r} share no site, so there is nothing to fuse.")
    state.fusions[fuse.name] = (fuse, config)
    return added


def delete_fusion(backbone, name):
    state = get_state(backbone)
    if state is None or name not in state.fusions:
        raise ValueError(f"No fusion named {name!r}.")
    for holder in state.sites.values():
        if name in holder.fusion_layers:
            with unlocked(holder):
                holder.fusion_layers.pop(name)
    del state.fusions[name]
    if state.active is not None and name in [f.name for f in composition.fusions(state.active)]:
        state.active = None


def check_spec(backbone, spec):
    """The spec parsed, with every name and fusion known to `backbone`."""
    spec = composition.parse(spec)
    state = get_state(backbone, create=True)
    for name in composition.adapter_names(spec):
        _require(backbone, name)
    for fuse in composition.fusions(spec):
        if fuse.name not in state.fusions or state.fusions[fuse.name][0].children != fuse.children:
            raise ValueError(f"{fuse!r} has not been added; call model.add_adapter_fusion(...) first.")
    _check_sequence_changing_placement(state, spec)
    return spec


def _check_sequence_changing_placement(state, spec):
    """Input-end units change the sequence every row sees, so they run on
    their own or in a `Stack`, not inside blocks that split or mix rows."""
    direct = {spec} if isinstance(spec, str) else set()
    if isinstance(spec, composition.Stack):
        direct = {c for c in spec.children if isinstance(c, str)}
    misplaced = [n for n in composition.adapter_names(spec) if state.configs[n].changes_sequence and n not in direct]
    if misplaced:
        raise ValueError(
            f"{misplaced[0]!r} is a {state.configs[misplaced[0]].method!r} adapter (it changes the sequence the "
            f"encoder attends over), which works alone or in a Stack, not inside {type(spec).__name__}(...)."
        )


def set_active(backbone, spec):
    """Make `spec` (a name, a block, or `None`) what the sites compute."""
    state = get_state(backbone, create=True)
    state.active = None if spec is None else check_spec(backbone, spec)
    return state.active


def set_trainable(backbone, names=(), fusion_names=()):
    """Freeze everything, then let the named adapters and fusions train.

    A full fine-tuning adapter among `names` unfreezes the whole backbone.
    """
    state = get_state(backbone, create=True)
    for w in backbone.weights:
        w.trainable = False
    for name in names:
        if not state.configs[name].freezes_backbone:
            for w in state.original_weights:
                w.trainable = True
    for holder in state.sites.values():
        for name, unit in holder.units.items():
            for w in unit.weights:
                w.trainable = name in names
        for name, layer in holder.fusion_layers.items():
            for w in layer.weights:
                w.trainable = name in fusion_names


def adapter_weights_by_key(backbone, name):
    """{key: variable} of one adapter's units, keyed as adapter folders are
    (`transformer_layer_0/self_attention_layer/query/lora_a`). A full
    fine-tuning adapter owns the backbone's own weights (keyed by path)."""
    state = _require(backbone, name)
    weights = {}
    if not state.configs[name].freezes_backbone:
        weights.update({w.path: w for w in state.original_weights})
    for holder in state.sites.values():
        unit = holder.units.get(name)
        if unit is None:
            continue
        for rel, w in unit.keyed_weights(f"{holder.scope}/{name}").items():
            weights[f"{holder.scope}/{holder.label}/{rel}"] = w
    return weights


def fusion_weights_by_key(backbone, name):
    """{key: variable} of one fusion's layers."""
    state = get_state(backbone)
    weights = {}
    for holder in state.sites.values():
        layer = holder.fusion_layers.get(name)
        if layer is None:
            continue
        prefix = f"{holder.scope}/{name}/{layer.name}/"
        for w in layer.weights:
            weights[f"{holder.scope}/{layer.name}/{w.path[len(prefix):]}"] = w
    return weights


def units_of(backbone, name):
    """{site path: unit} of one adapter."""
    state = _require(backbone, name)
    return {key: h.units[name] for key, h in state.sites.items() if name in h.units}


def merge_adapter(backbone, name):
    """Fold a LoRA / (IA)^3 adapter into the base weights and remove it.

    Raises, before changing anything, when the adapter is not linear in the
    base weights (bottleneck adapters) or other adapters would see the
    changed backbone.
    """
    state = _require(backbone, name)
    others = [n for n in state.configs if n != name]
    if others:
        raise ValueError(
            f"Merging {name!r} changes the backbone weights that the adapters {others} were "
            "trained on; delete them first (model.delete_adapter) or export without merging."
        )
    units = units_of(backbone, name)
    unmergeable = sorted({type(u).__name__ for u in units.values() if not u.mergeable})
    if unmergeable:
        raise ValueError(
            f"The {state.configs[name].method!r} adapter ({', '.join(unmergeable)}) "
            "is not linear in the base weights and cannot be merged; export it "
            "as it is."
        )
    for unit in units.values():
        unit.merge()
    config = state.configs[name]
    delete_adapter(backbone, name)
    return config


def adapter_weights(backbone):
    """Every weight that adapters and fusions added (not the originals)."""
    state = get_state(backbone)
    if state is None:
        return []
    return [
        w
        for holder in state.sites.values()
        for layer in [*holder.units.values(), *holder.fusion_layers.values()]
        for w in layer.weights
    ]


def inject_adapters(backbone, method, name="default"):
    """Add one adapter, make it active and trainable (the rest frozen).

    Example:
    ```python
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    inject_adapters(backbone, LoRAConfig(rank=8))
    ```
    """
    units = add_adapter(backbone, name, method)
    set_active(backbone, name)
    set_trainable(backbone, [name])
    return units


__all__ = [
    "SITES",
    "AdapterSite",
    "AdapterState",
    "add_adapter",
    "add_fusion",
    "adapter_weights",
    "adapter_weights_by_key",
    "delete_adapter",
    "delete_fusion",
    "encoder_layers",
    "fusion_weights_by_key",
    "get_state",
    "inject_adapters",
    "merge_adapter",
    "set_active",
    "set_trainable",
]
