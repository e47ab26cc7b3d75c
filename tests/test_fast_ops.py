"""Faster dropout and GELU: the same functions as Keras', checked in float64."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_backbone
from conftest import token_batch

from keras_adapters import fast_ops
from keras_adapters import serving_graph


def _tanh_gelu64(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


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


def test_gelu_and_its_gradient_match_float64():
    x = np.linspace(-6, 6, 2001).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fast_ops.gelu_approximate(xt)
    grad = tape.gradient(y, xt).numpy()
    np.testing.assert_allclose(y.numpy(), _tanh_gelu64(x), atol=2e-6)
    h = 1e-6
    slope64 = (_tanh_gelu64(x.astype(np.float64) + h) - _tanh_gelu64(x.astype(np.float64) - h)) / (2 * h)
    np.testing.assert_allclose(grad, slope64, atol=2e-6)


def test_gelu_in_bfloat16_is_closer_to_float64_than_keras_own():
    x = tf.cast(tf.random.stateless_normal([100_000], seed=[5, 6]) * 3, tf.bfloat16)
    exact = _tanh_gelu64(tf.cast(x, tf.float64).numpy())
    ours = fast_ops.gelu_approximate(x)
    theirs = keras.activations.gelu(x, approximate=True)
    assert ours.dtype == tf.bfloat16
    error = {k: np.abs(tf.cast(v, tf.float64).numpy() - exact).mean() for k, v in (("ours", ours), ("keras", theirs))}
    assert error["ours"] <= error["keras"], error


def test_speed_up_changes_the_backbone_layers_once_and_not_what_they_compute():
    plain = tiny_backbone(seed=0)
    fast = tiny_backbone(seed=0)
    # embeddings + per layer: attention probabilities, attention output, feed-forward; and 2 GELU denses
    assert fast_ops.speed_up(fast) == 1 + 3 * 2 + 2
    assert fast_ops.speed_up(fast) == 0
    batch = token_batch(batch=3, length=10)
    want = plain(batch, training=False)["sequence_output"].numpy()
    got = fast(batch, training=False)["sequence_output"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # In training, a different (seeded) mask, at the same rate.
    trained = fast(batch, training=True)["sequence_output"].numpy()
    assert not np.allclose(trained, want, atol=1e-3)


def test_the_served_graph_uses_keras_hubs_gelu_for_the_onednn_fusion():
    backbone = tiny_backbone(seed=0)
    fast_ops.speed_up(backbone)
    assert fast_ops.for_serving(backbone) == 2
    assert serving_graph.fuse_dense_layers(backbone) == 4
    function = tf.function(lambda ids: backbone(
        {"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": tf.ones_like(ids, tf.bool)}
    )["sequence_output"]).get_concrete_function(tf.TensorSpec([None, 10], tf.int32))
    types = [op.type for op in function.graph.get_operations() if "feedforward" in op.name]
    assert "Tanh" in types and "Sigmoid" not in types
