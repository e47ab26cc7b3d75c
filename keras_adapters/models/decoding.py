"""Cached decoding of a batch of left-padded prompts.

keras-hub's `CausalLM.generate_step` takes right-padded prompts: it fills
the cache with one forward over the whole row (the prompt, its padding and
the room for every new token), then steps one token at a time from the
shortest prompt's end, so a batch whose prompts differ by `d` tokens runs
`d` extra steps, each over the full model. Here every prompt ends at the
same column (padding on the left, masked as keys): one forward over the
prompts fills the cache, and the loop runs exactly `max_new_tokens` steps,
as PyTorch's `generate` does with left padding.

Left padding shifts a row's positions; a family decodes this way only when
its attention depends on relative positions (rotary embeddings: Llama). The
family's `cached_forward` runs its decoder over a slice of the row with a
key mask (see `keras_adapters.backbones.llama.cached_forward`).

keras-hub's samplers (greedy, top-k, top-p, ...) choose the tokens, so
anything that takes a `keras_hub.samplers.Sampler` works here.
"""

import tensorflow as tf


def left_pad(rows, width):
    """(token ids `[batch, width]`, key mask) of prompts (lists of ids), each
    ending at column `width` (the mask False on the padding before it)."""
    import numpy as np

    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, True
    return ids, mask


def left_pad_ragged(ids):
    """`left_pad` in the graph: a `tf.RaggedTensor` of prompts -> (ids, key mask)."""
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    width = tf.reduce_max(lengths)
    right = ids.to_tensor(default_value=0, shape=tf.stack([tf.shape(lengths)[0], width]))
    columns = tf.range(width)[None, :]
    shifted = (columns - (width - lengths)[:, None]) % width  # row i moves right by its padding
    return tf.gather(right, shifted, batch_dims=1), columns >= (width - lengths)[:, None]


def prefill(language_model, forward, prompt_ids, key_mask, max_new_tokens):
    """Fill a cache with the prompts' keys and values.

    Returns:
        (hidden states of the prompts `[batch, width, hidden]`, cache with
        room for `max_new_tokens` more positions, the key mask over them).
    """
    backbone = language_model.backbone
    batch, width = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    shape = [batch, backbone.num_layers, 2, width + max_new_tokens, backbone.num_key_value_heads, head_dim]
    cache = tf.zeros(tf.stack(shape), language_model.compute_dtype)
    key_mask = tf.concat([tf.cast(key_mask, tf.bool), tf.ones(tf.stack([batch, max_new_tokens]), tf.bool)], axis=1)
    hidden, cache = forward(language_model, prompt_ids, cache, 0, key_mask)
    return hidden, cache, key_mask


def generate(language_model, forward, prompt_ids, key_mask, max_new_tokens, sampler, stop_token_ids=None):
    """The tokens generated after left-padded prompts, `[batch, max_new_tokens]`.

    Args:
        language_model: a keras-hub `CausalLM` (its backbone and token embedding).
        forward: the family's `cached_forward`.
        prompt_ids: int32 `[batch, width]`, each prompt ending at the last column.
        key_mask: bool `[batch, width]`, False on the left padding.
        max_new_tokens: an int or a scalar int32 tensor.
        sampler: a `keras_hub.samplers.Sampler`.
        stop_token_ids: ids after which a row is done (the loop ends when
            every row is); tokens after a row's stop token are not meaningful.
    """
    backbone = language_model.backbone
    batch, width = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    hidden, cache, full_mask = prefill(language_model, forward, prompt_ids, key_mask, max_new_tokens)

    def next_token_logits(tokens, cache, index):
        token = tf.slice(tokens, tf.stack([0, index - 1]), tf.stack([batch, 1]))
        states, cache = forward(language_model, token, cache, index - 1, full_mask)
        logits = backbone.token_embedding(states, reverse=True)
        return logits[:, 0], states[:, 0], cache

    new = tf.zeros(tf.stack([batch, max_new_tokens]), prompt_ids.dtype)
    tokens = tf.concat([prompt_ids, new], axis=1)
    in_prompt = tf.broadcast_to(tf.range(width + max_new_tokens)[None, :] < width, tf.shape(tokens))
    # Hidden states of every position (contrastive search reads them); the new ones start at zero.
    states = tf.concat([hidden, tf.zeros(tf.stack([batch, max_new_tokens, tf.shape(hidden)[2]]), hidden.dtype)], 1)
    tokens = sampler(
        next=next_token_logits, prompt=tokens, cache=cache, index=width, mask=in_prompt,
        stop_token_ids=stop_token_ids, hidden_states=states, model=language_model,
    )
    return tokens[:, width:]
