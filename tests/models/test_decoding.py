"""Decoding prompts aligned on the left (`keras_adapters.models.decoding`): the
cache filled over a batch of prompts of different lengths gives each row the
logits the model gives that prompt alone (the padding masked: attending to
it changes them), with and without a prompt adapter's virtual tokens."""

import numpy as np
import pytest
import tensorflow as tf

from keras_adapters.backbones.llama import FAMILY
from keras_adapters.core import injection
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig
from keras_adapters.models import decoding
from keras_adapters.models.causal_lm import AdapterCausalLM

from tiny_llama import tiny_llama_folder

ROWS = [[3, 9, 6, 11, 4, 7, 8], [5, 10], [7, 3, 3, 12]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model = AdapterCausalLM.from_preset(tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama")),
                                        method=LoRAConfig(rank=2, target_modules=("query", "value")))
    model.add_adapter("prompt", PromptConfig(num_virtual_tokens=3, init="random"))
    model.add_adapter("prefix", PrefixConfig(prefix_length=4, reparameterize=False))
    rng = np.random.default_rng(0)
    for name in ("default", "prompt", "prefix"):
        for w in injection.adapter_weights_by_key(model.backbone, name).values():
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def _right_padded(rows, width=8):
    ids = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids, np.array([len(r) for r in rows], np.int32)


def _last_logits(model, ids, lengths, masked=True):
    prompts, prefixes = decoding.split_units(injection.input_units(model.backbone))
    x, padding_mask = decoding.embed(model.language_model, FAMILY, ids, tf.sequence_mask(lengths, ids.shape[1]), prompts)
    x, key_mask = decoding.left_align(x, tf.reduce_sum(tf.cast(padding_mask, tf.int32), 1))
    key_mask = key_mask if masked else tf.ones_like(key_mask)
    hidden, _, _, _ = decoding.prefill(model.language_model, FAMILY, x, key_mask, 3, prefixes)
    return np.asarray(model.backbone.token_embedding(hidden[:, -1], reverse=True), np.float64)


@pytest.mark.parametrize("active", ["default", "prompt", "prefix"])
def test_each_left_aligned_row_gets_the_logits_of_its_prompt_alone(model, active):
    model.set_active_adapters(active)
    ids, lengths = _right_padded(ROWS)
    batched = _last_logits(model, ids, lengths)
    for i, row in enumerate(ROWS):
        alone = np.asarray(model({"token_ids": np.array([row]), "padding_mask": np.ones((1, len(row)), bool)}))
        np.testing.assert_allclose(batched[i], alone[0, -1], atol=1e-4 * np.abs(alone).max())
    # The check can fail: keys on the padding (token 0) move the shorter rows' logits.
    unmasked = _last_logits(model, ids, lengths, masked=False)
    assert np.abs(unmasked[1] - batched[1]).max() > 1e-2 * np.abs(batched[1]).max()


@pytest.mark.parametrize("active", ["default", "prompt", "prefix"])
def test_greedy_rows_of_a_batch_decode_as_each_prompt_alone(model, active):
    model.set_active_adapters(active)
    texts = [model.tokenizer.detokenize(np.array(r, np.int32)) for r in ROWS]
    batched = model.generate(texts, max_new_tokens=5, stop_token_ids=None)
    assert batched == [model.generate(t, max_new_tokens=5, stop_token_ids=None) for t in texts]


def test_left_align_moves_each_row_to_end_at_the_last_column():
    ids, lengths = _right_padded(ROWS, width=7)
    moved, mask = decoding.left_align(tf.constant(ids), lengths)
    for i, row in enumerate(ROWS):
        assert moved.numpy()[i, 7 - len(row):].tolist() == row
        assert mask.numpy()[i].tolist() == [False] * (7 - len(row)) + [True] * len(row)


def test_the_cache_write_passes_gradients_to_the_cache_and_the_written_values():
    from tensorflow.compiler.tf2xla.python import xla

    rng = np.random.default_rng(0)
    cache, update, weights = (tf.constant(rng.normal(size=s)) for s in ((2, 6, 3), (2, 2, 3), (2, 6, 3)))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([cache, update])
        loss = tf.reduce_sum(weights * xla.dynamic_update_slice(cache, update, tf.constant([0, 3, 0])))
    expected = weights.numpy().copy()
    expected[:, 3:5] = 0.0  # overwritten: no gradient to the cache there
    np.testing.assert_array_equal(tape.gradient(loss, cache).numpy(), expected)
    np.testing.assert_array_equal(tape.gradient(loss, update).numpy(), weights.numpy()[:, 3:5])
