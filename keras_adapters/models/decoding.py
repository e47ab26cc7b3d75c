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
without padding, relative to one another.

Left padding shifts a row's positions; a family decodes this way only when
its attention depends on relative positions (rotary embeddings: Llama). The
family's `cached_forward` runs its decoder over a slice of the row with a
key mask (see `keras_adapters.backbones.llama.cached_forward`).

keras-hub's samplers (greedy, top-k, top-p, ...) choose the tokens, so
anything that takes a `keras_hub.samplers.Sampler` works here.
"""

import tensorflow as tf


def embed(language_model, token_ids, padding_mask, prompts=()):
    """(embeddings, padding mask) of right-padded rows with the virtual tokens
    of `prompts` (input-end units, `PromptEmbedding`) in front."""
    x = language_model.backbone.token_embedding(token_ids)
    for unit in prompts:
        x, padding_mask = unit.insert(x, padding_mask)
    return x, padding_mask


def left_align(x, lengths):
    """Rows of `x` (`[batch, width, ...]`, each row's first `lengths[i]`
    entries real) moved right so that every row ends at the last column;
    returns (moved `x`, mask of the real entries)."""
    width = tf.shape(x)[1]
    lengths = tf.cast(lengths, tf.int32)
    columns = tf.range(width)[None, :]
    source = (columns - (width - lengths)[:, None]) % width  # row i moves right by its padding
    return tf.gather(x, source, batch_dims=1), columns >= (width - lengths)[:, None]


def prefill(language_model, forward, x, key_mask, max_new_tokens):
    """Fill a cache with the keys and values of left-aligned embeddings `x`.

    Returns:
        (hidden states `[batch, width, hidden]`, cache with room for
        `max_new_tokens` more positions, the key mask over all of them).
    """
    backbone = language_model.backbone
    batch, width = tf.shape(x)[0], tf.shape(x)[1]
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    shape = [batch, backbone.num_layers, 2, width + max_new_tokens, backbone.num_key_value_heads, head_dim]
    cache = tf.zeros(tf.stack(shape), language_model.compute_dtype)
    key_mask = tf.concat([tf.cast(key_mask, tf.bool), tf.ones(tf.stack([batch, max_new_tokens]), tf.bool)], axis=1)
    hidden, cache = forward(language_model, x, cache, 0, key_mask)
    return hidden, cache, key_mask


def generate(language_model, forward, token_ids, lengths, max_new_tokens, sampler, stop_token_ids=None, prompts=()):
    """The tokens generated after each prompt, `[batch, max_new_tokens]`.

    Args:
        language_model: a keras-hub `CausalLM` (its backbone and token embedding).
        forward: the family's `cached_forward`.
        token_ids: int32 `[batch, width]`, each prompt's ids first (right-padded).
        lengths: int32 `[batch]`, each prompt's length (at least 1).
        max_new_tokens: an int or a scalar int32 tensor.
        sampler: a `keras_hub.samplers.Sampler`.
        stop_token_ids: ids after which a row is done (the loop ends when
            every row is); tokens after a row's stop token are not meaningful.
        prompts: the active prompt adapters' units (virtual tokens).
    """
    backbone = language_model.backbone
    lengths = tf.cast(lengths, tf.int32)
    batch = tf.shape(token_ids)[0]
    x, padding_mask = embed(language_model, token_ids, tf.sequence_mask(lengths, tf.shape(token_ids)[1]), prompts)
    x, key_mask = left_align(x, tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1))
    width = tf.shape(x)[1]
    hidden, cache, full_mask = prefill(language_model, forward, x, key_mask, max_new_tokens)

    def next_token_logits(tokens, cache, index):
        token = tf.slice(tokens, tf.stack([0, index - 1]), tf.stack([batch, 1]))
        states, cache = forward(language_model, backbone.token_embedding(token), cache, index - 1, full_mask)
        logits = backbone.token_embedding(states, reverse=True)
        return logits[:, 0], states[:, 0], cache

    # The sampler reads ids: each row's prompt ids end at column `width` as its embeddings do.
    aligned, _ = left_align(token_ids, lengths)
    front = tf.zeros(tf.stack([batch, width - tf.shape(token_ids)[1]]), token_ids.dtype)
    tokens = tf.concat([front, aligned, tf.zeros(tf.stack([batch, max_new_tokens]), token_ids.dtype)], axis=1)
    in_prompt = tf.broadcast_to(tf.range(width + max_new_tokens)[None, :] < width, tf.shape(tokens))
    # Hidden states of every position (contrastive search reads them); the new ones start at zero.
    states = tf.concat([hidden, tf.zeros(tf.stack([batch, max_new_tokens, tf.shape(hidden)[2]]), hidden.dtype)], 1)
    tokens = sampler(
        next=next_token_logits, prompt=tokens, cache=cache, index=width, mask=in_prompt,
        stop_token_ids=stop_token_ids, hidden_states=states, model=language_model,
    )
    return tokens[:, width:]
