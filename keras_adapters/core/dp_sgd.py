"""DP-SGD inside `model.fit`: Poisson-sampled batches, per-example clipping, noise.

`keras_adapters.core.privacy` plans a run (noise, sampling rate, steps);
here the plan is carried out:

- `poisson_batches`: the training examples, held in memory, drawn into
  batches by Poisson sampling (each example independently with probability
  `q`, so batch sizes vary and a batch may be empty), as the accountant
  assumes.
- `batched_clipped_gradient_sum`: each example's gradient of exactly the
  trainable weights from batched forward and backward passes
  (`keras_adapters.methods.per_example`; the batch sorted by length, 32
  examples a pass, each pass cut after its longest row), scaled to at most
  `clip_norm`, summed. For models whose trainable weights all sit in maps
  that module computes (LoRA, bottleneck adapters and their layer norms, the
  classification heads).
- `clipped_gradient_sum`: the same for any model, one example at a time in a
  `tf.while_loop` (two in flight), each cut to its own length first. On
  short texts its per-example cost is mostly TensorFlow's fixed cost per op;
  the batched pass is 2-3 times cheaper there (BENCHMARKS.md).
  `tf.vectorized_map` computes the same in one pass, but crashes inside
  oneDNN on MiniLM at 32 x 128 tokens (TensorFlow 2.21).
- `train_step`: the sum plus Gaussian noise of `noise_multiplier * clip_norm`,
  divided by the expected batch size, goes to the optimizer.

The sampling and the noise come from generators seeded by the operating
system (`os.urandom`), never from the run's `seed`: whoever knows the seed
(it is written in `train_config.json`) could otherwise recompute both and
subtract the noise. A private run is therefore not reproducible bit for bit.
The examples run with dropout off (`training=False`): Li et al. (ICLR 2022)
found dropout hurts DP training, and it keeps each example's gradient a
function of that example and the weights only.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from keras_adapters.methods import per_example

#: Examples whose forward and backward passes overlap (two cores).
PARALLEL_EXAMPLES = 2


def secret_generator():
    """A random generator seeded by the operating system, not by Keras' seed."""
    return tf.random.Generator.from_seed(int.from_bytes(os.urandom(8), "little") >> 1)


# ------------------------------------------------------------------- data
def examples_in_memory(dataset):
    """Every element of a batched dataset, as one nested structure of numpy
    arrays (one row per example). DP-SGD samples its own batches from them."""
    parts = [tf.nest.map_structure(np.asarray, batch) for batch in dataset]
    if not parts:
        raise ValueError("The training data holds no example.")
    try:
        return tf.nest.map_structure(lambda *rows: np.concatenate(rows, axis=0), *parts)
    except ValueError as e:
        raise ValueError(
            f"Private training holds every example in memory at one length, but the batches differ ({e}); "
            "turn length bucketing off."
        ) from None


def poisson_batches(examples, sampling_rate, steps, generator=None):
    """A dataset of `steps` batches, each holding every example of `examples`
    independently with probability `sampling_rate`.

    Iterated again (the next epoch), it draws new batches: the generator's
    state is not reset with the iterator.
    """
    generator = generator or secret_generator()
    count = len(tf.nest.flatten(examples)[0])
    held = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), examples)

    def draw(_):
        chosen = tf.where(generator.uniform([count]) < sampling_rate)[:, 0]
        return tf.nest.map_structure(lambda v: tf.gather(v, chosen), held)

    # Nothing here to tune, and with autotuning on, deleting an epoch's
    # iterator (as `fit` does at the next epoch) sometimes waits out the
    # tuning thread's sleep: 31-35 s with no CPU in BENCHMARKS.md's runs.
    options = tf.data.Options()
    options.autotune.enabled = False
    batches = tf.data.Dataset.range(steps).map(draw).with_options(options)
    batches.held_variables = held  # alive as long as the dataset
    return batches


# ---------------------------------------------------------------- gradients
class DPState:
    """What a private model's `train_step` needs: the plan, the noise
    generator, whether examples may be cut to their length, whether one
    batched pass gives every example's gradient (`batched`), and the
    structure of one example's outputs (the loop collects them for the
    metrics)."""

    def __init__(self, plan, output_spec, trim, batched=False):
        self.plan = plan
        self.output_spec = output_spec
        self.trim = trim
        self.batched = batched
        self.noise = secret_generator()


def prepare(model, plan, examples, task):
    """Attach a `DPState` to `model` for `plan`, from one of its `examples`
    (run once, to learn the outputs' structure and whether the batched pass
    covers every trainable weight)."""
    first = tf.nest.map_structure(lambda a: a[:1], examples[0])
    outputs = model(first, training=False)
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape[1:], t.dtype), outputs)
    # Per-token outputs average their loss over the batch's tokens, not its examples.
    batched = not task.token_outputs and _unweighted(examples) and per_example.covers(model, first)
    model.dp_state = DPState(plan, spec, trim=not task.token_outputs, batched=batched)
    return model.dp_state


def _unweighted(examples):
    return not (isinstance(examples, tuple) and len(examples) > 2 and examples[2] is not None)


def batched_clipped_gradient_sum(model, x, y, clip_norm, variables=None, chunk=None):
    """`clipped_gradient_sum` (without sample weights) from batched passes:
    the examples sorted by length and taken `chunk` at a time (bounded
    memory, little padding), each chunk cut after its longest row, one
    forward and one backward pass per chunk. The model's loss must be the
    mean of its examples' losses and `per_example.covers(model, ...)` hold.
    The outputs come back in the batch's order."""
    variables = list(variables if variables is not None else model.trainable_variables)
    chunk = chunk or BATCHED_CHUNK
    x, y = tf.nest.map_structure(tf.convert_to_tensor, (x, y))
    count = tf.shape(tf.nest.flatten(x)[0])[0]
    order = tf.argsort(_lengths(x, count), stable=True)
    x, y = tf.nest.map_structure(lambda t: tf.gather(t, order), (x, y))

    def body(i, sums, loss_sum, written):
        part = lambda t: t[i * chunk : (i + 1) * chunk]  # noqa: E731
        xi, yi = trim_padding(tf.nest.map_structure(part, x)), tf.nest.map_structure(part, y)
        size = tf.shape(tf.nest.flatten(xi)[0])[0]
        chunk_sums, chunk_loss, prediction = _batched_sum(model, xi, yi, clip_norm, variables, size)
        written = tf.nest.map_structure(lambda ta, p: ta.write(i, p), written, prediction)
        return i + 1, [a + b for a, b in zip(sums, chunk_sums)], loss_sum + chunk_loss, written

    chunks = (count + chunk - 1) // chunk
    arrays = tf.nest.map_structure(
        lambda spec: tf.TensorArray(spec.dtype, size=chunks, infer_shape=False, element_shape=[None, *spec.shape]),
        model.dp_state.output_spec,
    )
    start = (tf.constant(0), [tf.zeros_like(v) for v in variables], tf.constant(0.0), arrays)
    _, sums, loss_sum, arrays = tf.while_loop(lambda i, *_: i < chunks, body, start)
    back = tf.math.invert_permutation(order)  # the batch's order again
    outputs = tf.nest.map_structure(lambda ta: tf.gather(_concat(ta), back), arrays)
    return sums, loss_sum, outputs


#: Examples per batched pass (`batched_clipped_gradient_sum`).
BATCHED_CHUNK = 32


def _lengths(x, count):
    if isinstance(x, dict) and "padding_mask" in x:
        return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1)
    return tf.zeros([count], tf.int32)


def _concat(array):
    """A TensorArray of `[rows, ...]` parts as one tensor (no part: zero rows)."""
    shape = array.element_shape
    return tf.cond(array.size() > 0, array.concat, lambda: tf.zeros([0, *shape[1:]], array.dtype))


def _batched_sum(model, x, y, clip_norm, variables, count):
    with per_example.recording() as notes, tf.GradientTape() as tape:
        prediction = model(x, training=False)
        mean = model.compute_loss(x=x, y=y, y_pred=prediction, training=True)
        loss_sum = tf.reduce_mean(tf.cast(mean, tf.float32)) * tf.cast(count, tf.float32)  # (a scalar)
    grads = notes.gradients(tape, loss_sum, variables, count)
    flat = [tf.reshape(g, [count, -1]) for g in grads]
    norms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(f), axis=1) for f in flat]))
    scale = tf.ones_like(norms) if clip_norm is None else tf.minimum(1.0, clip_norm / tf.maximum(norms, 1e-12))
    # A row vector times each weight's gradients: `tensordot` builds ~15 ops
    # per weight, which for ~150 weights took 1.4 s of the step's tracing.
    row = scale[tf.newaxis, :]
    sums = [tf.cast(tf.reshape(tf.matmul(row, f), v.shape), v.dtype) for f, v in zip(flat, variables)]
    return sums, loss_sum, prediction


def clipped_gradient_sum(model, x, y, sample_weight, clip_norm, variables=None, trim=True):
    """(sum over examples of each one's gradient clipped to `clip_norm`,
    sum of their losses, the model's outputs for the batch).

    `clip_norm=None` sums unclipped gradients. An example's loss is the
    model's loss on that example alone (a batch of one); with `trim`, the
    example is cut after its last real token first (`trim_padding`).
    """
    variables = list(variables if variables is not None else model.trainable_variables)
    x, y, sample_weight = tf.nest.map_structure(lambda t: None if t is None else tf.convert_to_tensor(t), (x, y, sample_weight))
    count = tf.shape(tf.nest.flatten(x)[0])[0]

    def body(i, sums, loss_sum, written):
        xi, yi, wi = (_row(t, i) for t in (x, y, sample_weight))
        if trim:
            xi = trim_padding(xi)
        with tf.GradientTape() as tape:
            prediction = model(xi, training=False)
            loss = model.compute_loss(x=xi, y=yi, y_pred=prediction, sample_weight=wi, training=True)
        grads = [_dense(g, v) for g, v in zip(tape.gradient(loss, variables), variables)]
        scale = 1.0
        if clip_norm is not None:
            norm = tf.linalg.global_norm(grads)
            scale = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
        sums = [s + g * scale for s, g in zip(sums, grads)]
        written = tf.nest.map_structure(lambda ta, p: ta.write(i, p[0]), written, prediction)
        return i + 1, sums, loss_sum + tf.cast(loss, tf.float32), written

    arrays = tf.nest.map_structure(
        lambda spec: tf.TensorArray(spec.dtype, size=count, element_shape=spec.shape), model.dp_state.output_spec
    )
    start = (tf.constant(0), [tf.zeros_like(v) for v in variables], tf.constant(0.0), arrays)
    _, sums, loss_sum, arrays = tf.while_loop(
        lambda i, *_: i < count, body, start, parallel_iterations=PARALLEL_EXAMPLES
    )
    return sums, loss_sum, tf.nest.map_structure(lambda ta: ta.stack(), arrays)


def trim_padding(x):
    """A batch cut after its longest row's last real token: BERT's outputs
    at real positions do not depend on padding, so this changes no result
    and saves the padding's work. Inputs without a `padding_mask` are
    returned as they are."""
    if not isinstance(x, dict) or "padding_mask" not in x:
        return x
    mask = x["padding_mask"]
    length = mask.shape[1]
    positions = tf.range(1, tf.shape(mask)[1] + 1)
    last = tf.maximum(tf.reduce_max(positions[tf.newaxis, :] * tf.cast(mask, tf.int32)), 1)

    def cut(t):
        return t[:, :last] if t.shape.rank >= 2 and t.shape[1] == length else t

    return {k: cut(v) for k, v in x.items()}


def _row(t, i):
    return None if t is None else tf.nest.map_structure(lambda a: a[i : i + 1], t)


def _dense(gradient, variable):
    if gradient is None:  # a weight this example's loss does not reach
        return tf.zeros_like(variable)
    return tf.cast(tf.convert_to_tensor(gradient), variable.dtype)


# ---------------------------------------------------------------- the step
def noised_mean(sums, plan, generator):
    """Gaussian noise of `noise_multiplier * clip_norm` added to each summed
    gradient, divided by the expected batch size (not the drawn one, which
    would depend on who is in the batch)."""
    std = plan.noise_multiplier * plan.config.clip_norm
    expected = plan.sampling_rate * plan.num_examples
    return [(s + generator.normal(tf.shape(s), dtype=s.dtype) * std) / expected for s in sums]


def train_step(model, data):
    """`Model.train_step` under DP-SGD (what `AdapterModel.train_step` runs
    when compiled with `privacy=`)."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    state = model.dp_state
    variables = model.trainable_variables
    clip_norm = state.plan.config.clip_norm
    if state.batched and sample_weight is None:
        sums, loss_sum, y_pred = batched_clipped_gradient_sum(model, x, y, clip_norm, variables)
    else:
        sums, loss_sum, y_pred = clipped_gradient_sum(model, x, y, sample_weight, clip_norm, variables, trim=state.trim)
    gradients = noised_mean(sums, state.plan, state.noise)
    model.optimizer.apply_gradients(zip(gradients, variables))
    count = tf.shape(tf.nest.flatten(x)[0])[0]
    model._loss_tracker.update_state(loss_sum / tf.cast(tf.maximum(count, 1), tf.float32), sample_weight=count)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
