"""What keras-hub's decoder families share: their layers' cached call.

keras-hub's `LlamaTransformerDecoder` and its generic `TransformerDecoder`
(GPT-2's layers) take the same arguments (`decoder_padding_mask`,
`decoder_attention_mask`, `self_attention_cache`,
`self_attention_cache_update_index`) and their backbones end with
`layer_norm`, so one forward serves both; a family adds what differs (how
positions enter) around it. A family whose layers are called otherwise
(Gemma 3's) walks its layers and caches with `over_layers`.
"""

import tensorflow as tf


def over_layers(language_model, x, cache, step):
    """`step(layer, x, layer_cache) -> (x, layer_cache)` over the decoder's
    layers, then its final norm; the cache `[batch, layers, 2, length, kv
    heads, head_dim]`, or a list of each layer's `[batch, 2, ...]` (for
    runtimes without 6-D slices: TFLite), comes back in the form given."""
    backbone = language_model.backbone
    layered = isinstance(cache, (list, tuple))
    caches = []
    for i, layer in enumerate(backbone.transformer_layers):
        x, layer_cache = step(layer, x, cache[i] if layered else cache[:, i])
        caches.append(layer_cache)
    return backbone.layer_norm(x), caches if layered else tf.stack(caches, axis=1)


def cached_forward(language_model, x, cache, index, key_mask):
    """The decoder's layers over embeddings `x` (columns `index`... of the
    rows, positions already in them where the family adds them), reading and
    writing the cache (see `over_layers`), keys masked by `key_mask`
    `[batch, cache length]`; with `cache=None`, over whole rows (`key_mask`
    their padding mask).

    Returns:
        (final hidden states, updated cache in the form given, or `None`).
    """
    backbone = language_model.backbone
    if cache is None:
        for layer in backbone.transformer_layers:
            x = layer(x, decoder_padding_mask=key_mask)
        return backbone.layer_norm(x), None
    shape = tf.stack([tf.shape(x)[0], tf.shape(x)[1], tf.shape(key_mask)[1]])
    mask = tf.broadcast_to(tf.cast(key_mask, "int32")[:, None, :], shape)

    def step(layer, x, layer_cache):
        return layer(x, decoder_attention_mask=mask, self_attention_cache=layer_cache,
                     self_attention_cache_update_index=index)

    return over_layers(language_model, x, cache, step)
