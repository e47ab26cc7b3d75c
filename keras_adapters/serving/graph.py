"""The model a served graph is traced from: its precision and its fused layers.

Export never traces the user's model itself: it traces a copy (built from the
model's config, weights copied) that

- computes in the export's *precision*: `"float32"`, `"bfloat16"` (half the
  SavedModel, about 1.5x the batch throughput on CPUs with AVX512-BF16 or
  AMX) or `"float16"` (for GPUs; CPUs without AVX512-FP16 run it slower than
  float32). The copy's variables are stored in that dtype, so no weight is
  cast per call. Layer norms and the heads' softmax still compute in float32
  (Keras does this for every half-precision policy), and the served
  `probabilities` stay float32;
- has a lone LoRA/(IA)^3 adapter merged into the base weights (no extra
  latency), when asked;
- runs the feed-forward dense layers of each encoder layer as a 2-D
  `MatMul` -> `BiasAdd` -> activation, and the attention's query, key,
  value and output projections as a 2-D `MatMul` -> `BiasAdd` (einsum
  computes them through transposes and, at small batches, costs more than
  the product itself). keras-hub's `Dense` multiplies the
  3-D hidden states through `tensordot` (reshape, matmul, reshape, then the
  bias), which hides the pattern from grappler's oneDNN remapper; in 2-D it
  fuses the three into one `_MklFusedMatMul` (GELU included), which took the
  bf16 MiniLM batch from 284 to 243 ms of summed op time (BENCHMARKS.md).
  Only plain `Dense` and `EinsumDense` layers are rewritten: a layer
  wrapped by an adapter site runs as it is.

The rewrite changes how the same function is computed, not the function: the
copy's outputs equal the model's up to rounding (checked in the tests).
"""

import keras
import tensorflow as tf

from keras_adapters.core import injection

PRECISIONS = ("float32", "bfloat16", "float16")

#: Encoder attributes whose `Dense` layer is run in 2-D (see module doc).
_FUSED_DENSE = ("_feedforward_intermediate_dense", "_feedforward_output_dense")
#: Attention attributes whose `EinsumDense` projection is run in 2-D.
_FUSED_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
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
    if fuse:
        fuse_dense_layers(copy.backbone)
    return copy


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
    """Run each encoder layer's plain feed-forward `Dense` layers in 2-D.

    Changes `backbone` in place (its layers' `call`); meant for a serving
    copy only: the change is not part of the layers' config.

    Returns:
        The number of layers rewritten.
    """
    count = 0
    for encoder in injection.encoder_layers(backbone):
        for attribute in _FUSED_DENSE:
            layer = getattr(encoder, attribute, None)
            if type(layer) is keras.layers.Dense and layer.use_bias:
                layer.call = _dense_2d_call(layer)
                count += 1
        attention = getattr(encoder, "_self_attention_layer", None)
        for attribute in _FUSED_PROJECTIONS:
            layer = getattr(attention, attribute, None)
            if (type(layer) is keras.layers.EinsumDense and layer.equation in (_INTO_HEADS, _OUT_OF_HEADS)
                    and layer.bias is not None and layer.activation in (None, keras.activations.linear)):
                layer.call = _projection_2d_call(layer)
                count += 1
    return count


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
