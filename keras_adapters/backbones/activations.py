"""Exact GELU for training: one formula forward, one backward, half precision computed in float32.

TensorFlow computes `keras.activations.gelu` as a chain of element-wise ops
(`0.5 * x * erfc(-x / sqrt(2))`) and differentiates it op by op: about ten
passes over a `[tokens, intermediate]` tensor for each backward pass. In bf16
every op of the chain rounds, and TensorFlow's `Erfc` has no vectorized bf16
kernel: in MiniLM's private training step under `mixed_bfloat16` the forward
`Erfc` alone took 501 of 3,968 ms of op time and GELU about a fifth of the
step (BENCHMARKS.md, "Private training"). PyTorch's GELU is one kernel each
way, computed in float32 for bf16 inputs.

`gelu` below computes the same function: in float32 it is bit for bit
`keras.activations.gelu`'s output; a bf16/fp16 input is computed in float32
and rounded once. Its gradient is the closed form `Φ(x) + x φ(x)`, reusing
the forward's `Φ(x)`. Served graphs need no gradient and want the plain op
chain, which grappler fuses into the matmul before it (`graph_form`).
"""

import keras
import tensorflow as tf

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327
#: Inputs computed in float32 (their own precision rounds every step of GELU).
_HALF = (tf.bfloat16, tf.float16)


@keras.saving.register_keras_serializable(package="keras_adapters")
def gelu(x):
    """Exact (erf) GELU, `x Φ(x)`, as `keras.activations.gelu` computes it,
    with a one-formula gradient; bf16/fp16 inputs computed in float32.

    Args:
        x: a floating tensor.

    Returns:
        A tensor of `x`'s shape and dtype.

    Example:
    ```python
    layer = keras.layers.Dense(1536, activation=keras_adapters.backbones.activations.gelu)
    ```
    """
    return _gelu(tf.convert_to_tensor(x))


@tf.custom_gradient
@tf.autograph.experimental.do_not_convert
def _gelu(x):
    computed = tf.cast(x, tf.float32) if x.dtype in _HALF else x
    cdf = 0.5 * tf.math.erfc(-computed * tf.cast(SQRT_HALF, computed.dtype))
    # x * (0.5 * erfc) rounds as tf.nn.gelu's (0.5 * x) * erfc: halving is exact.
    y = tf.cast(computed * cdf, x.dtype)

    def grad(dy):
        pdf = tf.exp(-0.5 * tf.square(computed)) * tf.cast(INV_SQRT_2PI, computed.dtype)
        return tf.cast(tf.cast(dy, computed.dtype) * (cdf + computed * pdf), x.dtype)

    return y, grad


def graph_form(activation):
    """The activation a graph without gradients computes: `gelu` as Keras'
    op chain (grappler fuses MatMul -> BiasAdd -> that chain into one oneDNN
    op), any other activation as it is."""
    return keras.activations.gelu if activation is gelu else activation
