"""The training GELU: Keras' values, the exact gradient, half precision rounded once."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from keras_adapters.backbones import activations

# Wide enough for both tails (erfc underflows below about -9 in float32).
X = np.concatenate([np.linspace(-12.0, 12.0, 2001), np.random.RandomState(0).randn(3000) * 3])


def _gelu64(x):
    return 0.5 * x * special.erfc(-x / np.sqrt(2.0))


def _gelu_gradient64(x):
    return 0.5 * special.erfc(-x / np.sqrt(2.0)) + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)


def _value_and_gradient(function, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = function(x)
    return y.numpy(), tape.gradient(y, x, output_gradients=tf.constant(upstream, y.dtype)).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_values_are_keras_gelus_bit_for_bit(dtype):
    x = X.astype(dtype)
    np.testing.assert_array_equal(activations.gelu(x).numpy(), keras.activations.gelu(x).numpy())


def test_the_gradient_is_gelus_derivative_in_float64():
    """Against TensorFlow differentiating Keras' op chain and against the
    closed form in scipy: both independent of the custom gradient. (TF's
    float64 `Erfc` and its gradient are accurate to a few 1e-6 relative,
    measured against scipy (1e-7 absolute where the derivative crosses zero), so that is the tolerance; a wrong term of the
    derivative is off by 1e-2 or more.)"""
    upstream = np.random.RandomState(1).randn(X.size)
    y, grad = _value_and_gradient(activations.gelu, X, upstream)
    assert y.dtype == grad.dtype == np.float64
    _, keras_grad = _value_and_gradient(keras.activations.gelu, X, upstream)
    np.testing.assert_allclose(grad, keras_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y, _gelu64(X), rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose(grad, upstream * _gelu_gradient64(X), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype):
    x = tf.cast(X[np.abs(X) < 8], dtype)
    as_float32 = tf.cast(x, "float32")
    upstream = tf.cast(np.random.RandomState(2).randn(x.shape[0]), dtype)
    y, grad = _value_and_gradient(activations.gelu, x, upstream)
    assert y.dtype == grad.dtype == tf.as_dtype(dtype)
    # The float32 GELU of the same inputs, rounded once.
    np.testing.assert_array_equal(y, tf.cast(keras.activations.gelu(as_float32), dtype).numpy())
    want = tf.cast(tf.cast(upstream, "float32") * _gelu_gradient64(as_float32.numpy().astype("float64")), dtype)
    # One rounding of float32 arithmetic: equal, or one unit in the last place apart.
    ulp = np.abs(tf.cast(want, "float32").numpy()) * (2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10)
    assert np.all(np.abs(grad.astype("float32") - tf.cast(want, "float32").numpy()) <= ulp + 1e-30)
    # Keras' chain rounds at each of its ops: its values are further from float64.
    exact = _gelu64(as_float32.numpy().astype("float64"))
    ours = np.abs(y.astype("float64") - exact).sum()
    theirs = np.abs(keras.activations.gelu(x).numpy().astype("float64") - exact).sum()
    assert ours < theirs


def test_it_serializes_by_name_and_comes_back_as_itself():
    config = keras.activations.serialize(activations.gelu)
    assert keras.activations.deserialize(config) is activations.gelu
    layer = keras.layers.Dense(4, activation=activations.gelu)
    assert keras.layers.Dense.from_config(layer.get_config()).activation is activations.gelu


def test_graphs_without_gradients_get_keras_op_chain():
    assert activations.graph_form(activations.gelu) is keras.activations.gelu
    assert activations.graph_form(keras.activations.relu) is keras.activations.relu
