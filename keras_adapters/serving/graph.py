"""The model a served graph is traced from: its precision and its fused layers.

Export never traces the user's model itself: it traces a copy (built from the
model's config, weights copied) that

- computes activations as plain op chains (`backbones.activations.graph_form`);
- computes in the export's *precision*: `"float32"`, `"bfloat16"` (half the
  SavedModel, about 1.5x the batch throughput on CPUs with AVX512-BF16 or
  AMX) or `"float16"` (for GPUs; CPUs without AVX512-FP16 run it slower than
  float32). The copy's variables are stored in that dtype, so no weight is
  cast per call. Layer norms and the heads' softmax still compute in float32
  (Keras does this for every half-precision policy), and the served
  `probabilities` stay float32;
- has a lone LoRA/(IA)^3 adapter merged into the base weights (no extra
  latency), when asked;
- runs the feed-forward dense layers of each encoder layer (and the
  adapters' own, e.g. bottleneck projections) as a 2-D
  `MatMul` -> `BiasAdd` -> activation, and the attention's query, key,
  value and output projections as a 2-D `MatMul` -> `BiasAdd` (einsum
  computes them through transposes and, at small batches, costs more than
  the product itself);
- runs self-attention whose query, key and value projections are plain
  (no adapter site on them) as one `[features, 3 * heads * head size]`
  product, one transpose into heads and one out of them (Keras' einsums
  take five transposes per layer), the query's `1/sqrt(head size)` folded
  into its weights. The two transposes move the tensors' bits as integers
  (`_transpose`): oneDNN's float transpose costs about as much as a
  16-token projection, TensorFlow's own kernel a twentieth of that. The
  fused weights are new variables; the export stores the variables its
  graphs read, so the SavedModel keeps its size.

keras-hub's `Dense` multiplies the
  3-D hidden states through `tensordot` (reshape, matmul, reshape, then the
  bias), which hides the pattern from grappler's oneDNN remapper; in 2-D it
  fuses the three into one `_MklFusedMatMul` (GELU included), which took the
  bf16 MiniLM batch from 284 to 243 ms of summed op time (BENCHMARKS.md).
  Only plain `Dense` and `EinsumDense` layers are rewritten: a layer
  wrapped by an adapter site runs as it is (inside an attention layer that
  prefix tuning wraps, its plain query and output projections are rewritten).

The rewrite changes how the same function is computed, not the function: the
copy's outputs equal the model's up to rounding (checked in the tests).
"""

import keras
import tensorflow as tf

from keras_adapters.backbones import activations
from keras_adapters.core import injection

PRECISIONS = ("float32", "bfloat16", "float16")

#: Attention attributes whose `EinsumDense` projection is run in 2-D.
_FUSED_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
#: The attention's query, key and value projections (fused into one).
_QKV = _FUSED_PROJECTIONS[:3]
#: What the fused self-attention reads of Keras' MultiHeadAttention.
_MHA_INTERNALS = _FUSED_PROJECTIONS + (
    "_inverse_sqrt_key_dim", "_compute_attention_mask", "_masked_softmax", "_dropout")
#: Rewrite plain self-attention as one query/key/value product (module doc).
#: A switch for the benchmarks that measure the graph without it.
_FUSE_SELF_ATTENTION = True
#: Transpose attention tensors as integers (`_transpose`). A switch for the
#: benchmarks that measure oneDNN's float transposes.
_INTEGER_TRANSPOSES = True
#: The projections' equations (Keras' MultiHeadAttention on [batch, length,
#: features]): into heads, and back out of them.
_INTO_HEADS, _OUT_OF_HEADS = "abc,cde->abde", "abcd,cde->abe"


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    return precision


def serving_copy(model, precision="float32", merge=True, fuse=True):
    """A copy of `model` to trace a served graph from (see module doc).

    Args:
        model: an `AdapterTextClassifier`; it is not changed.
        precision: one of `PRECISIONS`, the dtype the copy stores and
            computes in.
        merge: fold a lone LoRA/(IA)^3 adapter into the base weights.
        fuse: run the feed-forward dense layers and the attention
            projections in 2-D (see module doc).
    """
    check_precision(precision)
    if merge and _mergeable(model):
        # Merged in float32, then rounded once to the served precision.
        model = _copy(model, "float32")
        model.merge_adapter()
        copy = model if precision == "float32" else _copy(model, precision)
    else:
        copy = _copy(model, precision)
    _graph_activations(copy)
    if fuse:
        fuse_dense_layers(copy.backbone)
    return copy


def _graph_activations(model):
    """Activations written for training (`backbones.activations`) as the op
    chains they stand for: a served graph has no gradient, grappler fuses
    the chain into the matmul before it, and TFLite's converter knows it."""
    for layer in model._flatten_layers(include_self=False):
        activation = getattr(layer, "activation", None)
        served = activations.graph_form(activation)
        if served is not activation:
            layer.activation = served


def _copy(model, precision):
    config = model.get_config()
    # The tokenizer's vocabulary is an asset, not config: share the layer.
    config["preprocessor"] = model.preprocessor
    config["backbone"]["config"]["dtype"] = precision
    config["precision"] = None  # the export's precision, not the training's autocast
    copy = type(model).from_config(config)
    for target, source in zip(copy.weights, model.weights):
        target.assign(tf.cast(source, target.dtype))
    return copy


def _mergeable(model):
    """A lone, active, unmerged LoRA/(IA)^3 adapter (several adapters share
    the base weights, so they export as they are)."""
    names = model.adapter_names
    return (
        len(names) == 1
        and model.active_adapters == names[0]
        and model.merged_adapter is None
        and model.adapter_config().method in ("lora", "ia3")
    )


def fuse_dense_layers(backbone):
    """Run each encoder layer's plain `Dense` layers (feed-forward, adapters')
    and attention projections in 2-D, and plain self-attention fused (module doc).

    Changes `backbone` in place (its layers' `call`); meant for a serving
    copy only: the change is not part of the layers' config.

    Returns:
        The number of layers rewritten.
    """
    count = 0
    for encoder in injection.encoder_layers(backbone):
        for layer in _plain_dense_layers(encoder):
            layer.call = _dense_2d_call(layer)
            count += 1
        attention = getattr(encoder, "_self_attention_layer", None)
        if isinstance(attention, injection.AttentionSite):  # prefix tuning's: its projections are inside
            attention = attention.base
        for attribute in _FUSED_PROJECTIONS:
            layer = getattr(attention, attribute, None)
            if (type(layer) is keras.layers.EinsumDense and layer.equation in (_INTO_HEADS, _OUT_OF_HEADS)
                    and layer.bias is not None and layer.activation in (None, keras.activations.linear)):
                layer.call = _projection_2d_call(layer)
                count += 1
        if _FUSE_SELF_ATTENTION and _fusable_attention(attention):
            attention.call = _self_attention_call(attention)
            count += 1
    return count


def _plain_dense_layers(encoder):
    """The `Dense` layers with a bias inside `encoder`: its feed-forward layers
    and the adapters' own (bottleneck down/up projections), but not a layer an
    adapter site wraps (the site computes it)."""
    # Keras' own walk over nested layers (sites hold their units in a dict).
    layers = list(encoder._flatten_layers(include_self=False))
    wrapped = {id(layer.base) for layer in layers if isinstance(layer, injection.AdapterSite)}
    return [layer for layer in layers
            if type(layer) is keras.layers.Dense and layer.use_bias and id(layer) not in wrapped]


def _fusable_attention(layer):
    """Keras' own MultiHeadAttention, no gate, plain query/key/value projections
    into heads (an adapter site on one of them keeps the layer as it is), and
    the internals the fused call reads (a Keras that renames them keeps its
    own attention; the tests compare the fused one with Keras').

    Not a layer built with `dropout=0`: Keras then takes its
    `dot_product_attention` path, which gives a row whose keys are all
    masked the mean of the values where `_masked_softmax` gives zeros."""
    projections = [getattr(layer, a, None) for a in _QKV]
    if not all(hasattr(layer, a) for a in _MHA_INTERNALS) or not getattr(layer, "_dropout", 0):
        return False
    return type(layer) is keras.layers.MultiHeadAttention and not getattr(layer, "_use_gate", False) and all(
        type(p) is keras.layers.EinsumDense and p.equation == _INTO_HEADS and p.bias is not None
        and p.activation in (None, keras.activations.linear)
        and tuple(p.kernel.shape) == tuple(projections[0].kernel.shape) for p in projections)


def _fused_qkv(layer):
    """New variables: the query, key and value kernels side by side, [features,
    3 * heads * size], and their biases; the query's scale folded in (in
    float32, rounded once to the layer's dtype)."""
    projections = [getattr(layer, a) for a in _QKV]
    features, heads, size = projections[0].kernel.shape
    scales = [float(layer._inverse_sqrt_key_dim), 1.0, 1.0]
    kernel = tf.concat([tf.reshape(tf.cast(p.kernel, "float32"), [features, heads * size]) * s
                        for p, s in zip(projections, scales)], 1)
    bias = tf.concat([tf.reshape(tf.cast(p.bias, "float32"), [heads * size]) * s
                      for p, s in zip(projections, scales)], 0)
    dtype = projections[0].kernel.dtype
    return (tf.Variable(tf.cast(kernel, dtype), trainable=False, name="fused_qkv_kernel"),
            tf.Variable(tf.cast(bias, dtype), trainable=False, name="fused_qkv_bias"))


def _self_attention_call(layer):
    """Self-attention as Keras computes it (same masks, same masked softmax,
    the output projection as its layer), with one projection and two
    transposes. Anything else (cross-attention, attention scores, a causal
    mask, dropout in training) runs the layer's own call."""
    kernel, bias = _fused_qkv(layer)
    features, heads, size = layer._query_dense.kernel.shape
    original = layer.call

    def call(query, value, key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
             return_attention_scores=False, training=None, use_causal_mask=False):
        if not _plain_self_attention(layer, query, value, key, training, return_attention_scores,
                                     use_causal_mask):
            return original(query, value, key=key, query_mask=query_mask, value_mask=value_mask,
                            key_mask=key_mask, attention_mask=attention_mask,
                            return_attention_scores=return_attention_scores, training=training,
                            use_causal_mask=use_causal_mask)
        mask = layer._compute_attention_mask(query, value, value_mask=value_mask, key_mask=key_mask,
                                             attention_mask=attention_mask)
        shape = tf.shape(query)
        x = tf.nn.bias_add(tf.matmul(tf.reshape(query, [-1, features]), kernel), bias)
        # [batch, length, 3, heads, size] -> [3, batch, heads, length, size]
        x = _transpose(tf.reshape(x, [shape[0], shape[1], 3, heads, size]), [2, 0, 3, 1, 4])
        q, k, v = tf.unstack(x)
        probabilities = layer._masked_softmax(tf.matmul(q, k, transpose_b=True), mask)
        context = _transpose(tf.matmul(probabilities, v), [0, 2, 1, 3])
        return layer._output_dense(context)

    return call


def _transpose(x, perm):
    """`tf.transpose` of `x`'s bits viewed as integers of its width.

    oneDNN's graph pass claims every float transpose (`_MklTranspose`), whose
    fixed cost per call is about 65 us on 2 cores where TensorFlow's own
    kernel moves a batch-1 attention tensor in 3-4 us; no oneDNN kernel takes
    integers. The bits move unchanged (BENCHMARKS.md "Integer transposes")."""
    if not _INTEGER_TRANSPOSES:
        return tf.transpose(x, perm)
    bits = {2: tf.int16, 4: tf.int32, 8: tf.int64}[x.dtype.size]
    return tf.bitcast(tf.transpose(tf.bitcast(x, bits), perm), x.dtype)


def _plain_self_attention(layer, query, value, key, training, return_attention_scores, use_causal_mask):
    # A Keras mask travels on the tensor (`_keras_mask`); the layer's own call reads it.
    return (value is query and (key is None or key is value) and not return_attention_scores
            and not use_causal_mask and not (training and layer._dropout > 0)
            and getattr(query, "_keras_mask", None) is None)


def _projection_2d_call(layer):
    """An attention projection as MatMul -> BiasAdd on [batch * length, features]:
    einsum runs it through transposes and a weight reorder per call, which at
    small batches cost more than the product (BENCHMARKS.md "Small batches")."""
    inputs_in = layer.kernel.shape[0] * (layer.kernel.shape[1] if layer.equation == _OUT_OF_HEADS else 1)
    outputs = layer.kernel.shape[-1] * (layer.kernel.shape[-2] if layer.equation == _INTO_HEADS else 1)

    def call(inputs, training=None):
        shape = tf.shape(inputs)
        x = tf.reshape(inputs, [-1, inputs_in])
        x = tf.matmul(x, tf.reshape(tf.cast(layer.kernel, x.dtype), [inputs_in, outputs]))
        x = tf.nn.bias_add(x, tf.reshape(tf.cast(layer.bias, x.dtype), [outputs]))
        if layer.equation == _INTO_HEADS:
            return tf.reshape(x, tf.concat([shape[:-1], layer.kernel.shape[1:]], 0))
        return tf.reshape(x, tf.concat([shape[:2], [outputs]], 0))

    return call


def _dense_2d_call(layer):
    def call(inputs, training=None):
        shape = tf.shape(inputs)
        x = tf.reshape(inputs, [-1, inputs.shape[-1]])
        x = tf.matmul(x, tf.cast(layer.kernel, x.dtype))
        x = tf.nn.bias_add(x, tf.cast(layer.bias, x.dtype))
        if layer.activation is not None:
            x = layer.activation(x)
        return tf.reshape(x, tf.concat([shape[:-1], [layer.units]], 0))

    return call
