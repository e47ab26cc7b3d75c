"""Gemma 3 decoders (text-only: Gemma 3 270M, 1B) from Hugging Face folders.

keras-hub's `Gemma3Backbone` computes these models (its Hugging Face loader
reads a `gemma3_text` checkpoint; a `.gguf` file becomes such a folder first,
`keras_adapters.io.gguf_checkpoint`). What sets the family apart:

- Token vectors are scaled by `sqrt(hidden_dim)` before the first layer
  (`embed_tokens`); a prompt's virtual tokens are not, as in peft, whose
  `inputs_embeds` skip Hugging Face's scaled embedding.
- Each layer norms the attention and feed-forward outputs again before the
  residual add (`post_attention_norm`, `post_ffw_norm`): what BERT puts on
  the dropout before that add (a bottleneck adapter) acts on those norms'
  output here, the last step before the add.
- Its query, key and value kernels are `[heads, hidden, head_dim]`
  (`btd,ndh->btnh`), which the methods read through
  `keras_adapters.methods.base.canonical_kernel`.
- Five of every six layers attend within a sliding window with their own
  rotary wavelength (10k; the others 1M), so a prefix's keys are turned
  layer by layer (`rotate_past`). Rows padded on the left keep their
  distances, so the window is the same as without padding; a prefix is put
  after each row's padding, right before its tokens (`masked_writes`), so
  that the window sees it where it is without padding.
- Its layers build their own masks from a padding mask (`padding_mask`,
  `cache`, `cache_update_index`), keep each layer's cache as a (keys, values)
  pair, and take a key mask as wide as the cache as their padding mask.
"""

import tensorflow as tf
from keras import ops

from keras_adapters.backbones.decoder import over_layers
from keras_adapters.backbones.family import Family
from keras_adapters.backbones.family import register_family
from keras_adapters.backbones.llama import HUGGINGFACE_SITES as LLAMA_HUGGINGFACE_SITES

#: Site name -> attribute path from a keras-hub `Gemma3DecoderBlock`: pre-norm
#: with a gated feed-forward block `ffw_linear(gelu(ffw_gating(x)) * ffw_gating_2(x))`.
SITES = {
    "query": ("attention", "query_dense"),
    "key": ("attention", "key_dense"),
    "value": ("attention", "value_dense"),
    "attention_output": ("attention", "output_dense"),
    "feedforward_gate_dense": ("gating_ffw",),
    "feedforward_intermediate_dense": ("gating_ffw_2",),
    "feedforward_output_dense": ("ffw_linear",),
    "self_attention_layer_norm": ("pre_attention_norm",),
    "feedforward_layer_norm": ("pre_ffw_norm",),
    "post_attention_layer_norm": ("post_attention_norm",),
    "post_feedforward_layer_norm": ("post_ffw_norm",),
    # Called only when the checkpoint trains with attention dropout (Gemma's is 0): mixed
    # precision reads its dtype, no method puts units there.
    "attention_probabilities_dropout": ("attention", "dropout_layer"),
}
#: No dropout before the residual adds: what BERT puts there acts on the post-norms' output.
ALIASES = {
    "self_attention_dropout": "post_attention_layer_norm",
    "feedforward_dropout": "post_feedforward_layer_norm",
}
#: Site -> the name keras-hub gives its sublayer (adapter weight keys carry it), where not the site's own.
WEIGHT_LABELS = {
    "feedforward_gate_dense": "ffw_gating",
    "feedforward_intermediate_dense": "ffw_gating_2",
    "feedforward_output_dense": "ffw_linear",
    "self_attention_layer_norm": "pre_attention_norm",
    "feedforward_layer_norm": "pre_ffw_norm",
    "post_attention_layer_norm": "post_attention_norm",
    "post_feedforward_layer_norm": "post_ffw_norm",
}
#: Hugging Face `Gemma3DecoderLayer` module -> site (peft folders name these): Llama's names.
HUGGINGFACE_SITES = dict(LLAMA_HUGGINGFACE_SITES)


def _layer_types():
    from keras_hub.src.models.gemma3.gemma3_decoder_block import Gemma3DecoderBlock

    return (Gemma3DecoderBlock,)


def language_model(backbone):
    """keras-hub's `Gemma3CausalLM` over `backbone` (no preprocessor).

    Raises:
        ValueError: the backbone has a vision encoder (images are not adapted here).
    """
    from keras_hub.src.models.gemma3.gemma3_causal_lm import Gemma3CausalLM

    if not getattr(backbone, "text_only_model", True):
        raise ValueError(
            "This Gemma 3 backbone has a vision encoder; AdapterCausalLM adapts text-only Gemma 3 "
            "checkpoints (model_type gemma3_text: Gemma 3 270M and 1B)."
        )
    return Gemma3CausalLM(preprocessor=None, backbone=backbone)


def embed_tokens(backbone, token_ids):
    """Token vectors scaled by `sqrt(hidden_dim)`, as `Gemma3Backbone` feeds its first layer."""
    x = backbone.token_embedding(token_ids)
    return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)


def cache_shape(backbone):
    """(layers, kv heads, head_dim) of the decoder's KV cache."""
    return int(backbone.num_layers), int(backbone.num_key_value_heads), int(backbone.head_dim)


def cached_forward(language_model, x, cache, index, key_mask, write_mask=None):
    """The decoder over `x` (see `keras_adapters.backbones.decoder.cached_forward`).
    The key mask goes in as the layers' padding mask: they take its
    minimum with their causal (and sliding-window) mask from column `index`.
    `write_mask` (`[batch, columns of x]`): the columns whose keys and values
    are written (keras-hub's `cache_update_mask`; the others keep what the
    cache holds there: a prefix placed after a row's padding)."""
    backbone = language_model.backbone
    if cache is None:
        for layer in backbone.transformer_layers:
            x = layer(x, padding_mask=key_mask)
        return backbone.layer_norm(x), None

    def step(layer, x, both):
        x, (keys, values) = layer(x, padding_mask=key_mask, cache=(both[:, 0], both[:, 1]), cache_update_index=index,
                                  cache_update_mask=write_mask)
        return x, tf.stack([keys, values], axis=1)

    return over_layers(language_model, x, cache, step)


def rotate_past(language_model, past, offsets):
    """A prefix's keys and values (`[batch, layers, 2, length, kv heads,
    head_dim]`) for rows whose tokens sit `offsets` columns after their
    positions: each layer's keys turned by its own rotary embedding (local
    and global layers differ in wavelength), as `llama.rotate_past` does."""
    rotated = []
    for i, layer in enumerate(language_model.backbone.transformer_layers):
        keys = past[:, i, 0]
        positions = tf.broadcast_to(tf.cast(offsets, tf.float32)[:, None], tf.shape(keys)[:2])
        rotated.append(tf.stack([layer.attention.rope_layer(keys, positions=positions), past[:, i, 1]], axis=1))
    return tf.stack(rotated, axis=1)


def tokenizer(folder):
    """keras-hub's `Gemma3Tokenizer` (SentencePiece, `tokenizer.model`) for the checkpoint in `folder`."""
    from keras_hub.src.models.gemma3.gemma3_tokenizer import Gemma3Tokenizer
    from keras_hub.src.utils.preset_utils import get_preset_loader

    return get_preset_loader(folder).load_tokenizer(Gemma3Tokenizer)


FAMILY = register_family(
    Family("gemma3", _layer_types, SITES, ALIASES, input_end=True, input_layers=("token_embedding", "transformer_layers"),
           prompt_placements=("before_cls",), huggingface_layers=r"model\.layers", huggingface_layer_name="model.layers",
           huggingface_sites=HUGGINGFACE_SITES, language_model=language_model, cached_forward=cached_forward,
           rotate_past=rotate_past, cache_shape=cache_shape, model_types=("gemma3_text",), tokenizer=tokenizer,
           masked_writes=True, layer_prefix="decoder_block_", weight_labels=WEIGHT_LABELS, embed_tokens=embed_tokens)
)
