"""Decoding left-padded prompts (`keras_adapters.models.decoding`): the cache
filled over a batch of prompts of different lengths gives each row the
logits the model gives that prompt alone (the padding masked: attending to
it changes them), and the graph's padding equals NumPy's."""

import numpy as np
import pytest
import tensorflow as tf

from keras_adapters.backbones.llama import cached_forward
from keras_adapters.core import injection
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.models import decoding
from keras_adapters.models.causal_lm import AdapterCausalLM

from tiny_llama import tiny_llama_folder

ROWS = [[3, 9, 6, 11, 4, 7, 8], [5, 10], [7, 3, 3, 12]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model = AdapterCausalLM.from_preset(tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama")),
                                        method=LoRAConfig(rank=2, target_modules=("query", "value")))
    rng = np.random.default_rng(0)
    for w in injection.adapter_weights_by_key(model.backbone, "default").values():
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def _last_logits(model, ids, key_mask):
    hidden, _, _ = decoding.prefill(model.language_model, cached_forward, tf.constant(ids), tf.constant(key_mask), 3)
    return np.asarray(model.backbone.token_embedding(hidden[:, -1], reverse=True), np.float64)


def test_each_left_padded_row_gets_the_logits_of_its_prompt_alone(model):
    ids, key_mask = decoding.left_pad(ROWS, 8)
    batched = _last_logits(model, ids, key_mask)
    for i, row in enumerate(ROWS):
        alone = np.asarray(model({"token_ids": np.array([row]), "padding_mask": np.ones((1, len(row)), bool)}))
        np.testing.assert_allclose(batched[i], alone[0, -1], atol=1e-4 * np.abs(alone).max())
    # The check can fail: keys on the padding (token 0) move the shorter rows' logits.
    unmasked = _last_logits(model, ids, np.ones_like(key_mask))
    assert np.abs(unmasked[1] - batched[1]).max() > 1e-2 * np.abs(batched[1]).max()


def test_greedy_rows_of_a_batch_decode_as_each_prompt_alone(model):
    texts = [model.tokenizer.detokenize(np.array(r, np.int32)) for r in ROWS]
    batched = model.generate(texts, max_new_tokens=5, stop_token_ids=None)
    assert batched == [model.generate(t, max_new_tokens=5, stop_token_ids=None) for t in texts]


def test_the_graph_pads_on_the_left_as_numpy_does():
    ids, mask = decoding.left_pad_ragged(tf.ragged.constant(ROWS, dtype=tf.int32))
    expected_ids, expected_mask = decoding.left_pad(ROWS, max(map(len, ROWS)))
    np.testing.assert_array_equal(ids.numpy(), expected_ids)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
