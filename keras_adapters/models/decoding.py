"""Cached decoding of a batch of prompts, aligned on the left padding.

keras-hub's `CausalLM.generate_step` takes right-padded prompts: it fills
the cache with one forward over the whole row (the prompt, its padding and
the room for every new token), then steps one token at a time from the
shortest prompt's end, so a batch whose prompts differ by `d` tokens runs
`d` extra steps, each over the full model. Here every prompt ends at the
same column (padding moved to the left, masked as keys): one forward over
the prompts fills the cache, and the loop runs exactly `max_new_tokens`
steps, as PyTorch's `generate` does with left padding.

Active prompt adapters (`PromptConfig`) put their virtual tokens in front of
each prompt before the padding moves, so a row sees
`[padding][virtual tokens][prompt]`: its tokens stand where they stand
without padding, relative to one another. A prefix adapter (`PrefixConfig`
on a decoder) is a past: keys and values at the front of every layer's
cache, `[prefix][padding][virtual tokens][prompt]`, its keys rotated by each
row's padding (the family's `rotate_past`) so that every token meets them
as it does without padding; for a family whose attention has a window
(Gemma 3), `[padding][prefix][virtual tokens][prompt]`, so that the window
sees the prefix where it is without padding (`Family.masked_writes`).

Left padding shifts a row's columns, not its positions: a token at cache
column `c` of a row padded by `p` has position `c - p` (a prefix holds
positions 0...). Rotary families (Llama) need nothing for that, attention
depending on distances only; a family with absolute position embeddings
(GPT-2) adds each column's own (`Family.add_positions`). The family's
`cached_forward` runs its decoder over a slice of the row with a key mask
(`keras_adapters.backbones.decoder.cached_forward`).

keras-hub's samplers (greedy, top-k, top-p, ...) choose the tokens, so
anything that takes a `keras_hub.samplers.Sampler` works here.
"""

import tensorflow as tf

from keras_adapters.methods.prefix import CachePrefix
from keras_adapters.methods.prompt import PromptEmbedding


def _dynamic_update_slice_gradient(op, grad):
    """The gradient of XLA's dynamic update slice (keras-hub's cached attention
    writes keys and values with it), which TensorFlow does not register:
    training a prefix runs the decoder over a cache that holds it."""
    from tensorflow.compiler.tf2xla.python import xla

    _, update, indices = op.inputs
    return (xla.dynamic_update_slice(grad, tf.zeros_like(update), indices),
            xla.dynamic_slice(grad, indices, tf.shape(update)), None)


try:
    tf.RegisterGradient("XlaDynamicUpdateSlice")(_dynamic_update_slice_gradient)
except KeyError:  # a TensorFlow that has its own
    pass


def split_units(units):
    """(prompt units, prefix units) of a model's active input-end units."""
    return ([u for u in units if isinstance(u, PromptEmbedding)], [u for u in units if isinstance(u, CachePrefix)])


def embed(language_model, family, token_ids, padding_mask, prompts=()):
    """(embeddings, padding mask) of right-padded rows with the virtual tokens
    of `prompts` (`PromptEmbedding` units) in front."""
    x = family.embed(language_model.backbone, token_ids)
    for unit in prompts:
        x, padding_mask = unit.insert(x, padding_mask)
    return x, padding_mask


def past_of(language_model, prefixes, batch):
    """The prefixes' keys and values for every row, `[batch, layers, 2, length,
    kv heads, head_dim]` (one after another when several are stacked)."""
    past = tf.concat([unit.past() for unit in prefixes], axis=2)
    past = tf.cast(past, language_model.compute_dtype)
    return tf.broadcast_to(past[None], tf.concat([[batch], tf.shape(past)], 0))


def positioned(language_model, family, x, positions):
    """Embeddings `x` with their `positions` (`[batch, columns]`) where the
    family adds position embeddings itself (GPT-2); `x` otherwise."""
    if family.add_positions is None:
        return x
    return family.add_positions(language_model, x, positions)


def forward(language_model, family, token_ids, padding_mask, units=()):
    """Hidden states of right-padded rows `[batch, length, hidden]` (training,
    scoring) with the active input-end units: virtual tokens in front (left
    out of the result again) and a prefix in a cache of its own."""
    prompts, prefixes = split_units(units)
    x, mask = embed(language_model, family, token_ids, padding_mask, prompts)
    start = sum(unit.prefix_length for unit in prefixes)  # tokens after a prefix start at its length
    positions = start + tf.broadcast_to(tf.range(tf.shape(x)[1])[None, :], tf.shape(x)[:2])
    x = positioned(language_model, family, x, positions)
    if not prefixes:
        hidden, _ = family.cached_forward(language_model, x, None, 0, mask)
    else:
        past = past_of(language_model, prefixes, tf.shape(x)[0])
        room = tf.zeros(tf.concat([tf.shape(past)[:3], [tf.shape(x)[1]], tf.shape(past)[4:]], 0), past.dtype)
        length = tf.shape(past)[3]
        key_mask = tf.concat([tf.ones(tf.stack([tf.shape(x)[0], length]), tf.bool), tf.cast(mask, tf.bool)], 1)
        hidden, _ = family.cached_forward(language_model, x, tf.concat([past, room], axis=3), length, key_mask)
    return hidden[:, sum(unit.num_virtual_tokens for unit in prompts):]


def left_align(x, lengths):
    """Rows of `x` (`[batch, width, ...]`, each row's first `lengths[i]`
    entries real) moved right so that every row ends at the last column;
    returns (moved `x`, mask of the real entries)."""
    width = tf.shape(x)[1]
    lengths = tf.cast(lengths, tf.int32)
    columns = tf.range(width)[None, :]
    source = (columns - (width - lengths)[:, None]) % width  # row i moves right by its padding
    return tf.gather(x, source, batch_dims=1), columns >= (width - lengths)[:, None]


def prefill(language_model, family, x, key_mask, max_new_tokens, prefixes=()):
    """Fill a cache with the prefixes and the keys and values of left-aligned
    token embeddings `x` (`key_mask` their real columns).

    Returns:
        (hidden states `[batch, width, hidden]`, cache with room for
        `max_new_tokens` more positions, the key mask over all of it, the
        prefixes' length).
    """
    batch, width = tf.shape(x)[0], tf.shape(x)[1]
    layers, heads, head_dim = family.cache_shape(language_model.backbone)
    room = tf.stack([batch, layers, 2, width + max_new_tokens, heads, head_dim])
    cache = tf.zeros(room, language_model.compute_dtype)
    padding = width - tf.reduce_sum(tf.cast(key_mask, tf.int32), axis=1)
    written = tf.cast(key_mask, tf.bool)
    key_mask = tf.concat([written, tf.ones(tf.stack([batch, max_new_tokens]), tf.bool)], axis=1)
    length = sum(unit.prefix_length for unit in prefixes)
    x = positioned(language_model, family, x, length + tf.range(width)[None, :] - padding[:, None])
    if prefixes:
        past = past_of(language_model, prefixes, batch)
        if family.rotate_past is not None:
            past = family.rotate_past(language_model, past, padding)
        cache = tf.concat([past, cache], axis=3)
        key_mask = tf.concat([tf.ones([batch, length], tf.bool), key_mask], axis=1)
        if family.masked_writes:  # [padding][prefix][tokens]: see Family.masked_writes
            columns = tf.range(tf.shape(cache)[3])[None, :]
            cache = tf.gather(cache, (columns - padding[:, None]) % tf.shape(cache)[3], axis=3, batch_dims=1)
            key_mask = columns >= padding[:, None]
    writes = {"write_mask": written} if family.masked_writes else {}
    hidden, cache = family.cached_forward(language_model, x, cache, length, key_mask, **writes)
    return hidden, cache, key_mask, length


def generate(language_model, family, token_ids, lengths, max_new_tokens, sampler, stop_token_ids=None, units=()):
    """The tokens generated after each prompt, `[batch, max_new_tokens]`.

    Args:
        language_model: a keras-hub `CausalLM` (its backbone and token embedding).
        family: the backbone's family (`cached_forward`, `cache_shape`, ...).
        token_ids: int32 `[batch, width]`, each prompt's ids first (right-padded).
        lengths: int32 `[batch]`, each prompt's length (at least 1).
        max_new_tokens: an int or a scalar int32 tensor.
        sampler: a `keras_hub.samplers.Sampler`.
        stop_token_ids: ids after which a row is done (the loop ends when
            every row is); tokens after a row's stop token are not meaningful.
        units: the active input-end units (prompts' virtual tokens, prefixes).
    """
    backbone = language_model.backbone
    prompts, prefixes = split_units(units)
    lengths = tf.cast(lengths, tf.int32)
    batch = tf.shape(token_ids)[0]
    x, padding_mask = embed(language_model, family, token_ids, tf.sequence_mask(lengths, tf.shape(token_ids)[1]), prompts)
    x, key_mask = left_align(x, tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1))
    hidden, cache, full_mask, length = prefill(language_model, family, x, key_mask, max_new_tokens, prefixes)
    start = length + tf.shape(x)[1]  # the first new token's cache column
    padding = tf.shape(x)[1] - tf.reduce_sum(tf.cast(key_mask, tf.int32), axis=1)

    def next_token_logits(tokens, cache, index):
        token = tf.slice(tokens, tf.stack([0, index - 1]), tf.stack([batch, 1]))
        embedded = positioned(language_model, family, family.embed(backbone, token), index - 1 - padding[:, None])
        states, cache = family.cached_forward(language_model, embedded, cache, index - 1, full_mask)
        logits = backbone.token_embedding(states, reverse=True)
        return logits[:, 0], states[:, 0], cache

    # The sampler reads ids by cache column: each row's prompt ids end at column `start` as its embeddings do.
    aligned, _ = left_align(token_ids, lengths)
    front = tf.zeros(tf.stack([batch, start - tf.shape(token_ids)[1]]), token_ids.dtype)
    # The slots of new tokens start at -1: the sampler ends the loop once every row holds a stop id outside its
    # prompt, and a checkpoint whose stop id is 0 would otherwise be done before it starts.
    room = tf.fill(tf.stack([batch, max_new_tokens]), tf.constant(-1, token_ids.dtype))
    tokens = tf.concat([front, aligned, room], axis=1)
    in_prompt = tf.broadcast_to(tf.range(start + max_new_tokens)[None, :] < start, tf.shape(tokens))
    # Hidden states of every column (contrastive search reads them); the others start at zero.
    states = tf.concat([tf.zeros(tf.stack([batch, length, tf.shape(hidden)[2]]), hidden.dtype), hidden,
                        tf.zeros(tf.stack([batch, max_new_tokens, tf.shape(hidden)[2]]), hidden.dtype)], 1)
    tokens = sampler(
        next=next_token_logits, prompt=tokens, cache=cache, index=start, mask=in_prompt,
        stop_token_ids=stop_token_ids, hidden_states=states, model=language_model,
    )
    return tokens[:, start:]
