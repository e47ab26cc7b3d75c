"""Every example's gradient from one batched backward pass (for DP-SGD).

The layers that hold adapter and head weights compute their linear maps
through `linear`, `dense` and `layer_norm` here: outside `recording()` these
are the plain computations. Inside it, each call also notes its input and
its output; the gradient of the batch's summed loss with respect to those
outputs then gives each example's gradient of each weight without a backward
pass per example (Goodfellow 2015, "Efficient per-example gradient
computations"; Opacus does the same with hooks):

- a kernel `W` in `z = x W (+ b)`: `x_b^T dz_b` (summed over the example's
  tokens), its bias `sum_t dz_b`;
- a layer norm's scale and offset: `sum_t dz_b * x_hat_b` and `sum_t dz_b`.

It holds because no layer mixes examples (no batch statistics) and the loss
of a batch is the sum of its examples' losses. `covers` tells whether every
trainable weight of a model is computed this way; a model with others (a
prompt, (IA)^3 scales, Compacter's factors) takes one backward pass per
example instead (`keras_adapters.core.dp_sgd`).

Example:
```python
with per_example.recording() as notes, tf.GradientTape() as tape:
    loss = tf.reduce_sum(per_example_losses(model(x)))
gradients = notes.gradients(tape, loss, model.trainable_variables)  # [batch, *shape] each
```
"""

import contextlib

import tensorflow as tf
from keras import ops

_RECORDING = []


class Notes:
    """The linear maps one forward pass computed: (kind, input, output,
    weights) each, `kind` "linear" (`output = input W + b`) or "scale_shift"
    (`output = input * gamma + beta`, input the normalized values)."""

    def __init__(self):
        self.entries = []

    def add(self, kind, inputs, outputs, weights):
        self.entries.append((kind, inputs, outputs, tuple(weights)))

    def variables(self):
        return [w for *_, weights in self.entries for w in weights if w is not None]

    def gradients(self, tape, loss, variables, batch):
        """Each of `variables`' per-example gradients, `[batch, *shape]`,
        float32 or float64 (zeros for one no noted map reached), from `tape` holding
        the forward pass and `loss` the sum of the examples' losses."""
        wanted = {id(v): i for i, v in enumerate(variables)}
        d_outputs = tape.gradient(loss, [outputs for _, _, outputs, _ in self.entries])
        found = [None] * len(variables)
        for (kind, inputs, _, weights), dz in zip(self.entries, d_outputs):
            if dz is None or not any(w is not None and id(w) in wanted for w in weights):
                continue
            for weight, grad in zip(weights, _weight_gradients(kind, inputs, dz)):
                if weight is not None and id(weight) in wanted:
                    i = wanted[id(weight)]
                    found[i] = grad if found[i] is None else found[i] + grad
        return [
            g if g is not None else tf.zeros(tf.concat([[batch], v.shape], 0), v.dtype)
            for g, v in zip(found, variables)
        ]


def _weight_gradients(kind, inputs, dz):
    """Per-example gradients of (kernel, bias) or (scale, offset), float32
    (float64 for float64 inputs)."""
    batch = tf.shape(inputs)[0]
    dtype = tf.float64 if inputs.dtype == tf.float64 else tf.float32
    x = tf.reshape(inputs, [batch, -1, inputs.shape[-1]])
    d = tf.reshape(dz, [batch, -1, dz.shape[-1]])
    if kind == "linear":
        return _per_example_products(x, d, dtype), tf.reduce_sum(tf.cast(d, dtype), axis=1)
    d = tf.cast(d, dtype)
    return tf.reduce_sum(d * tf.cast(x, dtype), axis=1), tf.reduce_sum(d, axis=1)


def _per_example_products(x, d, dtype):
    """`x_b^T d_b` for each example b. bfloat16 inputs multiply in bfloat16
    (oneDNN sums in float32 and rounds the result once, as the plain
    backward pass does for a weight's gradient): twice as fast as casting
    both to float32 first. Clipping bounds each example's rounded gradient,
    so the guarantee does not depend on this rounding."""
    if x.dtype == tf.bfloat16 and d.dtype == tf.bfloat16:
        return tf.cast(tf.linalg.matmul(x, d, transpose_a=True), dtype)
    return tf.linalg.matmul(tf.cast(x, dtype), tf.cast(d, dtype), transpose_a=True)


@contextlib.contextmanager
def recording():
    """Note the linear maps computed inside (see the module docstring)."""
    notes = Notes()
    _RECORDING.append(notes)
    try:
        yield notes
    finally:
        _RECORDING.remove(notes)


def _notes():
    return _RECORDING[-1] if _RECORDING else None


def linear(x, kernel, bias=None):
    """`x @ kernel (+ bias)` in `x`'s dtype (the kernel a 2-D weight)."""
    z = ops.matmul(x, ops.cast(kernel, x.dtype))
    if bias is not None:
        z = ops.add(z, ops.cast(bias, z.dtype))
    notes = _notes()
    if notes is not None:
        notes.add("linear", x, z, (kernel, bias))
    return z


def dense(layer, x):
    """`layer(x)` for a `keras.layers.Dense`; noted when recording."""
    if _notes() is None:
        return layer(x)
    x = ops.cast(x, layer.compute_dtype)
    return layer.activation(linear(x, layer.kernel, layer.bias if layer.use_bias else None))


def layer_norm(layer, x):
    """`layer(x)` for a `keras.layers.LayerNormalization` over the last
    axis; noted when recording (computed in float32, or float64 for a
    float64 layer)."""
    notes = _notes()
    if notes is None or not _last_axis_only(layer) or getattr(layer, "rms_scaling", False):
        return layer(x)
    dtype = "float64" if layer.compute_dtype == "float64" else "float32"
    values = ops.cast(x, dtype)
    mean, variance = ops.moments(values, axes=[-1], keepdims=True)
    normalized = (values - mean) * ops.rsqrt(variance + layer.epsilon)
    gamma = layer.gamma if layer.scale else None
    beta = layer.beta if layer.center else None
    z = normalized * ops.cast(gamma, dtype) if gamma is not None else normalized
    z = z + ops.cast(beta, dtype) if beta is not None else z
    notes.add("scale_shift", normalized, z, (gamma, beta))
    return ops.cast(z, layer.compute_dtype)


def _last_axis_only(layer):
    return list(layer.axis) == [-1] if isinstance(layer.axis, (list, tuple)) else layer.axis == -1


def covers(model, sample):
    """Whether every trainable weight of `model` gets its whole gradient
    through noted maps: each must be noted, and on `sample` (one example)
    the noted gradient of a fixed function of the outputs must be the
    gradient itself (a weight also used elsewhere would differ)."""
    variables = model.trainable_variables
    with recording() as notes, tf.GradientTape(persistent=True) as tape:
        outputs = tf.nest.flatten(model(sample, training=False))
        probe = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32) * _fixed_weights(o)) for o in outputs])
    noted = {id(v) for v in notes.variables()}
    if not variables or not all(id(v) in noted for v in variables):
        return False
    each = notes.gradients(tape, probe, variables, 1)
    whole = tape.gradient(probe, variables)
    return all(_close(e[0], w) for e, w in zip(each, whole))


def _fixed_weights(t):
    """Weights of varied sign for each output value (a sum of probabilities is constant)."""
    size = tf.size(t)
    return tf.reshape(tf.cos(tf.cast(tf.range(size), tf.float32) * 1.7 + 0.3), tf.shape(t))


def _close(noted, gradient):
    want = 0.0 if gradient is None else tf.cast(tf.convert_to_tensor(gradient), tf.float32)
    error = tf.reduce_max(tf.abs(tf.cast(noted, tf.float32) - want))
    # bfloat16 rounds the two sums differently; a missed use of a weight changes it wholesale
    return bool(error <= 0.05 * tf.reduce_max(tf.abs(want)) + 1e-7)
