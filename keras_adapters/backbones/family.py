"""Backbone families: where a kind of keras-hub transformer layer has its adapter sites.

A *site* is a named place inside one transformer layer (`"query"`,
`"feedforward_output_dense"`, ...): an attribute path to the sublayer there,
which keras-hub's own `call` reaches through that attribute at run time (so
a layer put in its place runs in training, in cached decoding and in the
served graph alike). Methods name sites (`keras_adapters.methods`); each
family says which sites its layers have and where they are. Sites are
concepts shared across families (a BERT encoder's and a Llama decoder's
query projection are both `"query"`), so one method config works on both.

A family may also *alias* a site it has no sublayer for to one it has: a
Llama decoder has no dropout after its feed-forward block, so the units
that BERT puts on that dropout's output (bottleneck adapters) act on the
output of the block's last projection, the same place in the computation.

A new family is one module that builds a `Family` and calls `register_family`.
"""

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Family:
    """Where the adapter sites of one kind of transformer layer are.

    Args:
        name: the family's name, for messages (`"bert"`, `"llama"`).
        layer_types: returns the keras-hub layer classes of the family's
            transformer layers (imported when first needed).
        sites: site name -> attribute path from a transformer layer.
        aliases: site name -> the site (of `sites`) whose layer it acts on.
        post_norm: the layer norms come after the residual adds (BERT), so
            a unit can read the normalised sum (`original_ln_before`).
        input_end: input-end adapters (prompt tuning) work on it.
        input_layers: the backbone attributes they run (a backbone whose
            layers are of the family but lacks one is refused).
        prompt_placements: where its prompt adapters may put their virtual
            tokens (`PromptConfig.placement`); the first is the default.
        language_model: for decoders, builds keras-hub's causal LM over a
            backbone of the family (its token embedding and sampling).
        huggingface_layers: a regex of where Hugging Face models of the
            family keep their layers (`model\\.layers` of `model.layers.3`),
            for reading peft folders.
        huggingface_sites: Hugging Face module (within a layer) -> site
            (a tuple of sites for a module fusing them, their outputs in order).
        huggingface_layer_name: the name layer `i`'s modules start with in
            the family's Hugging Face causal LM, before `.i` (`model.layers`).
        huggingface_fan_in_fan_out: its Hugging Face projections keep their
            weights `[in, out]` (GPT-2's Conv1D), as peft records it.
        cached_forward: for decoders, `(language_model, embeddings, cache,
            index, key_mask) -> (hidden states, cache)`: the decoder over
            columns `index`... of left-padded rows with a KV cache
            (`keras_adapters.models.decoding`); with `cache=None`, over whole
            right-padded rows (`key_mask` their padding mask). A family with
            `masked_writes` also takes `write_mask`.
        rotate_past: for decoders, `(language_model, past, offsets) -> past`:
            a prefix's cached keys and values for rows whose tokens sit
            `offsets` columns after their positions (left padding); `None`
            where cached keys carry no position (absolute embeddings).
        cache_shape: for decoders, `backbone -> (layers, kv heads, head_dim)`
            of its KV cache.
        add_positions: for decoders with absolute position embeddings
            (GPT-2), `(language_model, embeddings, positions) -> embeddings`
            with each column's position embedding added (`positions`
            `[batch, columns]`); `None` where attention places tokens itself
            (rotary embeddings).
        max_positions: `backbone -> the most positions it has` (`None`: no limit).
        model_types: the Hugging Face `model_type`s of the family's checkpoints.
        tokenizer: `folder -> keras-hub tokenizer` of such a checkpoint.
        masked_writes: for decoders whose `cached_forward` also takes
            `write_mask` (`[batch, columns]` of the slice: only those columns'
            keys and values are written) and whose attention has a window: a
            prefix then sits right before each row's tokens, after its
            padding, so that the window measures the distances it has
            without padding (`keras_adapters.models.decoding.prefill`).
        layer_prefix: how keras-hub names the family's layers before their
            index (`transformer_layer_` of `transformer_layer_3`; Gemma's
            `decoder_block_`): unit names (`target_layers`, `rank_pattern`)
            and adapter weight keys start with it.
        weight_labels: site -> the name of its sublayer in adapter weight
            keys, where that is not the site's own (Gemma's gate projection
            is `ffw_gating`: `decoder_block_0/ffw_gating/lora_a`).
        embed_tokens: for decoders whose token vectors enter the layers
            changed (Gemma scales them by `sqrt(hidden_dim)`), `(backbone,
            token_ids) -> embeddings` as its backbone computes them; `None`:
            the token embedding's own output (see `Family.embed`).
    """

    name: str
    layer_types: Callable[[], tuple]
    sites: dict
    aliases: dict = dataclasses.field(default_factory=dict)
    post_norm: bool = False
    input_end: bool = False
    input_layers: tuple = ()
    prompt_placements: tuple = ("after_cls", "before_cls")
    language_model: Callable | None = None
    huggingface_layers: str = ""
    huggingface_sites: dict = dataclasses.field(default_factory=dict)
    huggingface_layer_name: str = ""
    huggingface_fan_in_fan_out: bool = False
    cached_forward: Callable | None = None
    rotate_past: Callable | None = None
    cache_shape: Callable | None = None
    add_positions: Callable | None = None
    max_positions: Callable | None = None
    model_types: tuple = ()
    tokenizer: Callable | None = None
    masked_writes: bool = False
    layer_prefix: str = "transformer_layer_"
    weight_labels: dict = dataclasses.field(default_factory=dict)
    embed_tokens: Callable | None = None

    def layer_name(self, index):
        """The name of the backbone's layer `index` (`transformer_layer_3`)."""
        return f"{self.layer_prefix}{index}"

    def site_of_label(self, label):
        """The site whose units adapter weight keys name `label` (see `weight_labels`)."""
        return next((site for site, name in self.weight_labels.items() if name == label), label)

    def embed(self, backbone, token_ids):
        """The vectors of `token_ids` as the backbone's first layer receives
        them (before position embeddings; a prompt's virtual tokens go beside
        them as they are, as in peft's `inputs_embeds`)."""
        if self.embed_tokens is not None:
            return self.embed_tokens(backbone, token_ids)
        return backbone.token_embedding(token_ids)

    def owns(self, layer):
        return isinstance(layer, self.layer_types())

    def layers(self, backbone):
        """The backbone's transformer layers of this family, in order."""
        return [layer for layer in backbone.layers if self.owns(layer)]

    def where(self, site):
        """The site whose layer `site` acts on (itself, unless aliased), or
        `None` when layers of this family have no such place."""
        site = self.aliases.get(site, site)
        return site if site in self.sites else None

    def site_names(self):
        return sorted({*self.sites, *self.aliases})


#: Site name -> attribute path in keras-hub's generic `TransformerEncoder` and
#: `TransformerDecoder` (BERT's and GPT-2's layers), which name their sublayers alike.
TRANSFORMER_LAYER_SITES = {
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
    # What the attention probabilities pass through on their way to the
    # probability-value product.
    "attention_probabilities_dropout": ("_self_attention_layer", "_dropout_layer"),
}

_FAMILIES = []


def register_family(family):
    """Make a family's layers adaptable; returns `family`. Registering a
    family of the same name again replaces it (re-importing its module)."""
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != family.name]
    _FAMILIES.append(family)
    return family


def family_of_layer(layer):
    """The family whose transformer layer `layer` is, or `None`."""
    return next((f for f in _FAMILIES if f.owns(layer)), None)


def family_of(backbone):
    """The family of `backbone`'s transformer layers.

    Raises:
        ValueError: none of its layers belongs to a known family; the
            message names the families.
    """
    for family in _FAMILIES:
        if family.layers(backbone):
            return family
    raise ValueError(
        f"{type(backbone).__name__} has no transformer layers keras-adapters knows where to put adapters in; "
        f"the supported families are {[f.name for f in _FAMILIES]} (keras-hub BertBackbone-style encoders "
        "and the decoders of Llama3Backbone, GPT2Backbone and Gemma3Backbone)."
    )


def families():
    return list(_FAMILIES)


def family_of_checkpoint(model_type):
    """The family whose Hugging Face checkpoints have `model_type`, or `None`."""
    return next((f for f in _FAMILIES if model_type in f.model_types), None)
