"""Per-example gradients from one batched pass, against one pass per example in float64."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_adapters.methods import per_example


class Toy(keras.layers.Layer):
    """dense -> layer norm -> linear (a raw kernel) on [batch, tokens, features]:
    each kind of map `per_example` notes, with biases, a non-trivial norm and a
    sum over tokens into one score per example."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(5, activation="tanh", dtype=self.dtype_policy)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-3, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build((*input_shape[:-1], 5))
        self.kernel = self.add_weight(shape=(5, 2), initializer="glorot_uniform", name="kernel")
        rng = np.random.default_rng(0)
        self.norm.gamma.assign(1.0 + 0.3 * rng.standard_normal(5))  # identity norms would hide a bug
        self.norm.beta.assign(0.2 * rng.standard_normal(5))

    def call(self, x):
        h = per_example.layer_norm(self.norm, per_example.dense(self.dense, x))
        return tf.reduce_sum(per_example.linear(h, self.kernel), axis=1)


def losses(toy, x, y):
    return tf.reduce_sum(tf.square(toy(x) - y), axis=-1)  # one loss per example


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_examples_gradient_equals_a_backward_pass_of_its_own(dtype):
    toy = Toy(dtype=dtype)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((6, 4, 3)), dtype)
    y = tf.constant(rng.standard_normal((6, 2)), dtype)
    toy.build(x.shape)
    variables = toy.trainable_variables
    with per_example.recording() as notes, tf.GradientTape() as tape:
        total = tf.reduce_sum(losses(toy, x, y))
    each = notes.gradients(tape, total, variables, 6)
    assert len(notes.entries) == 3 and {id(v) for v in notes.variables()} == {id(v) for v in variables}
    for i in range(6):
        with tf.GradientTape() as single:
            loss = tf.reduce_sum(losses(toy, x[i : i + 1], y[i : i + 1]))
        for got, want in zip(each, single.gradient(loss, variables)):
            tol = 1e-12 if dtype == "float64" else 1e-5
            np.testing.assert_allclose(got[i].numpy(), want.numpy(), rtol=tol * 100, atol=tol)


def test_in_bfloat16_each_examples_gradient_is_float32_within_rounding():
    """bfloat16 maps multiply their per-example products in bfloat16 (one
    rounding of a float32 sum): each example's gradient must still be its own,
    against a float64 copy's pass of that example alone."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 8, 3))
    y = rng.standard_normal((6, 2))
    half, exact = Toy(dtype="mixed_bfloat16"), Toy(dtype="float64")
    half.build(x.shape)
    exact.build(x.shape)
    for h, e in zip(half.weights, exact.weights):
        e.assign(h.numpy().astype("float64"))
    with per_example.recording() as notes, tf.GradientTape() as tape:
        scores = tf.cast(half(tf.constant(x, "float32")), "float32")
        total = tf.reduce_sum(tf.square(scores - tf.constant(y, "float32")))
    each = notes.gradients(tape, total, half.trainable_variables, 6)
    assert all(g.dtype == tf.float32 for g in each)
    for i in range(6):
        with tf.GradientTape() as single:
            loss = tf.reduce_sum(losses(exact, tf.constant(x[i : i + 1]), tf.constant(y[i : i + 1])))
        for got, want in zip(each, single.gradient(loss, exact.trainable_variables)):
            error = np.abs(got[i].numpy() - want.numpy()).max() / np.abs(want.numpy()).max()
            assert error < 3e-2  # bfloat16 keeps 8 bits; another example's gradient is off by O(1)


def test_outside_recording_the_layers_compute_as_they_are():
    toy = Toy()
    x = tf.constant(np.random.default_rng(2).standard_normal((2, 4, 3)), "float32")
    toy.build(x.shape)
    plain = tf.reduce_sum(tf.matmul(toy.norm(toy.dense(x)), toy.kernel), axis=1)
    np.testing.assert_array_equal(toy(x).numpy(), plain.numpy())  # the same ops, bit for bit
    with per_example.recording():
        recorded = toy(x)  # the norm by hand, in float32
    np.testing.assert_allclose(recorded.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)


class Leaky(Toy):
    """The toy with its raw kernel also used outside a noted map."""

    def call(self, x):
        return super().call(x) + tf.reduce_sum(self.kernel) * tf.reduce_sum(x, axis=(1, 2))[:, None]


@pytest.mark.parametrize("toy,covered", [(Toy, True), (Leaky, False)])
def test_covers_only_a_model_whose_weights_are_all_in_noted_maps(toy, covered):
    layer = toy()
    x = tf.constant(np.random.default_rng(3).standard_normal((1, 4, 3)), "float32")
    layer.build(x.shape)
    assert per_example.covers(layer, x) is covered
