"""Faster dropout: the same function as Keras'."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_backbone
from conftest import token_batch

from keras_adapters import fast_ops


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_zeroes_at_the_rate_and_scales_the_rest(rate):
    x = tf.ones([1000, 1000])
    y = fast_ops.dropout(x, rate, tf.constant([7, 11], tf.int32)).numpy()
    dropped = (y == 0).mean()
    # 10^6 draws: the binomial standard deviation is at most 5e-4.
    assert abs(dropped - rate) < 3e-3, dropped
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)


def test_dropout_is_stateless_and_its_gradient_is_the_mask():
    x = tf.random.stateless_normal([64, 300], seed=[1, 2])
    seed = tf.constant([3, 4], tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fast_ops.dropout(x, 0.1, seed)
    grad = tape.gradient(y, x).numpy()
    again = fast_ops.dropout(x, 0.1, seed).numpy()
    other = fast_ops.dropout(x, 0.1, tf.constant([3, 5], tf.int32)).numpy()
    np.testing.assert_array_equal(y.numpy(), again)
    assert (np.equal(other, 0) != np.equal(again, 0)).any()
    np.testing.assert_allclose(grad, np.where(again == 0, 0.0, 1 / 0.9), rtol=1e-6)


def test_dropout_keeps_odd_sizes_and_half_precision():
    x = tf.ones([3, 5, 7], tf.bfloat16)
    y = fast_ops.dropout(x, 0.2, tf.constant([1, 1], tf.int32))
    assert y.shape == x.shape and y.dtype == tf.bfloat16


def test_speed_up_changes_the_backbone_layers_once_and_not_what_they_compute():
    plain = tiny_backbone(seed=0)
    fast = tiny_backbone(seed=0)
    # embeddings + per layer: attention probabilities, attention output, feed-forward
    assert fast_ops.speed_up(fast) == 1 + 3 * 2
    assert fast_ops.speed_up(fast) == 0
    batch = token_batch(batch=3, length=10)
    want = plain(batch, training=False)["sequence_output"].numpy()
    got = fast(batch, training=False)["sequence_output"].numpy()
    np.testing.assert_array_equal(got, want)
    # In training, a different (seeded) mask, at the same rate.
    trained = fast(batch, training=True)["sequence_output"].numpy()
    assert not np.allclose(trained, want, atol=1e-3)
