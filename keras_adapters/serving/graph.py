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
  take five transposes per layer). The two transposes move the tensors'
  bits as integers (`_transpose`): oneDNN's float transpose costs about as
  much as a 16-token projection, TensorFlow's own kernel a twentieth of
  that. In float32 and bfloat16 the scores are scaled and masked inside
  oneDNN's batch matmul (`_added_mask_context`), where Keras takes two
  `where`s over them; in float16 the query's `1/sqrt(head size)` is folded
  into its weights and Keras' masked softmax runs;
- computes a lone bottleneck adapter's down-projection (Houlsby, Pfeiffer)
  in the product of the linear layer whose output it reads (the
  attention's output projection, the feed-forward output): `y = xW + b`
  and `down(y) = x(W W_d) + (b W_d + b_d)` as one `[W, W W_d]` product
  (`_fold_bottleneck_downs`), 12 matmuls fewer in a 6-layer Houlsby model.
  A site holding several adapters keeps its plain product, so that the
  SavedModel stores the base weights once;
- computes each layer norm as Keras does (statistics in float32 for every
  precision) in fewer and cheaper ops than Keras' (`_float32_layer_norm`),
  and, in a float32 or bfloat16 call of 256 rows (batch x length) or
  more, as one oneDNN op (`_onednn_layer_norm`: the ops grappler's remapper
  fuses, scale and offset as constants of the graph). That op's fixed cost
  is more than a small call's whole layer norm, so one
  `tf.cond` on the rows picks the formulation for the call (`_sized_call`);
- runs each keras-hub encoder layer whose self-attention is fused on
  `[batch * length, features]` tensors (`_encoder_2d_call`), which drops
  the reshapes and shape ops around every projection; a composition
  (per-row routing, parallel) keeps the 3-D call.

keras-hub's `Dense` multiplies the 3-D hidden states through `tensordot`
(reshape, matmul, reshape, then the bias), which hides the pattern from
grappler's oneDNN remapper; in 2-D it fuses the three into one
`_MklFusedMatMul` (GELU included), which took the bf16 MiniLM batch from 284
to 243 ms of summed op time (BENCHMARKS.md). Only plain `Dense` and
`EinsumDense` layers are rewritten: a layer wrapped by an adapter site runs
as it is (inside an attention layer that prefix tuning wraps, its plain
query and output projections are rewritten).

The fused weights are new variables; the export stores the variables its
graphs read, so the SavedModel keeps its size (a folded feed-forward
down-projection stores `W W_d`, [intermediate, bottleneck], for `W_d`,
[hidden, bottleneck]: 166k values, 0.7% of MiniLM's).

The rewrite changes how the same function is computed, not the function: the
copy's outputs equal the model's up to rounding (checked in the tests).
"""

import threading

import keras
import keras_hub
import tensorflow as tf
from keras_hub.src.layers.modeling.transformer_layer_utils import merge_padding_and_attention_mask

from keras_adapters.backbones import activations
from keras_adapters.core import injection
from keras_adapters.methods.bottleneck import BottleneckAdapter

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
#: Fold a lone bottleneck's down-projection into the product before it
#: (`_fold_bottleneck_downs`). A switch for the benchmarks.
_FOLD_BOTTLENECK_DOWNS = True
#: Layer norms through `_layer_norm_call`. A switch for the benchmarks.
_LAYER_NORMS = True
#: Float32 and bfloat16 layer norms of large calls as one oneDNN op
#: (`_onednn_layer_norm`). A switch for the benchmarks.
_ONEDNN_LAYER_NORMS = True
#: The rows (batch x length) from which a call's layer norms are oneDNN's op
#: (`_sized_call`): one bf16 layer norm of 384 features takes 187 / 230 / 354
#: us at 16 / 128 / 512 rows in it, 70 / 132 / 835 us in the float32 ops (2
#: cores); they cross near 200. 0: every call, without the cond (the tests
#: and benchmarks).
_ONEDNN_LAYER_NORM_ROWS = 256
#: The branch `_sized_call` is tracing.
_TRACING = threading.local()
#: Attention scores scaled and masked inside oneDNN's batch matmul (`_fused_attention`). A switch for the benchmarks.
_ADDED_MASKS = True
#: The dtypes oneDNN's fused layer norm and masked batch matmul take.
_ONEDNN_DTYPES = ("float32", "bfloat16")
#: Run keras-hub's encoder layers on 2-D tensors (`_encoder_2d_call`). A switch for the benchmarks.
_TWO_D_ENCODERS = True
#: What the 2-D encoder call reads of keras-hub's TransformerEncoder.
_ENCODER_INTERNALS = ("normalize_first", "_self_attention_layer_norm", "_self_attention_dropout",
                      "_feedforward_layer_norm", "_feedforward_intermediate_dense", "_feedforward_output_dense",
                      "_feedforward_dropout")
#: (linear layer, the site reading its output through a dropout), by site name.
_FOLDS = (("attention_output", "self_attention_dropout"), ("feedforward_output_dense", "feedforward_dropout"))
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
    and attention projections in 2-D, plain self-attention fused, a lone
    bottleneck's down-projection inside the product before it, and layer
    norms in fewer ops (module doc).

    Changes `backbone` in place (its layers' `call`); meant for a serving
    copy only: the change is not part of the layers' config.

    Returns:
        The number of layers rewritten.
    """
    count = 0
    sized = False
    for layer in backbone._flatten_layers(include_self=False):
        if _LAYER_NORMS and _plain_layer_norm(layer):
            layer.call = _layer_norm_call(layer)
            count += 1
            sized |= _onednn_dtype(layer)
    if sized and _ONEDNN_LAYER_NORM_ROWS:
        backbone.call = _sized_call(backbone)
    for encoder in injection.encoder_layers(backbone):
        for layer in _plain_dense_layers(encoder):
            layer.call = _dense_2d_call(layer)
            count += 1
        attention = getattr(encoder, "_self_attention_layer", None)
        if isinstance(attention, injection.AttentionSite):  # prefix tuning's: its projections are inside
            attention = attention.base
        for attribute in _FUSED_PROJECTIONS:
            layer = getattr(attention, attribute, None)
            if _plain_projection(layer):
                layer.call = _projection_2d_call(layer)
                count += 1
        if _FUSE_SELF_ATTENTION and _fusable_attention(attention):
            attend = _fused_attention(attention)
            attention.call = _self_attention_call(attention, attend)
            count += 1
            if _TWO_D_ENCODERS and _plain_encoder(encoder, attention):
                encoder.call = _encoder_2d_call(encoder, attend)
                count += 1
        if _FOLD_BOTTLENECK_DOWNS:
            count += _fold_bottleneck_downs(encoder)
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


def _fused_qkv(layer, fold_scale):
    """New variables: the query, key and value kernels side by side, [features,
    3 * heads * size], and their biases; with `fold_scale`, the query's scale
    folded in (in float32, rounded once to the layer's dtype)."""
    projections = [getattr(layer, a) for a in _QKV]
    features, heads, size = projections[0].kernel.shape
    scales = [float(layer._inverse_sqrt_key_dim) if fold_scale else 1.0, 1.0, 1.0]
    kernel = tf.concat([tf.reshape(tf.cast(p.kernel, "float32"), [features, heads * size]) * s
                        for p, s in zip(projections, scales)], 1)
    bias = tf.concat([tf.reshape(tf.cast(p.bias, "float32"), [heads * size]) * s
                      for p, s in zip(projections, scales)], 0)
    dtype = projections[0].kernel.dtype
    return (tf.Variable(tf.cast(kernel, dtype), trainable=False, name="fused_qkv_kernel"),
            tf.Variable(tf.cast(bias, dtype), trainable=False, name="fused_qkv_bias"))


def _fused_attention(layer):
    """`attend(x, shape, mask)`: self-attention of `x`, [batch * length,
    features] (`shape`: [batch, length, ...]), as Keras computes it (same
    mask, same answers for masked keys) with one query/key/value product and
    two transposes; the context [batch, length, heads, size], before the
    output projection. In float32 and bfloat16 the scores are scaled and
    masked inside oneDNN's batch matmul (`_added_mask_context`); in float16
    through Keras' masked softmax."""
    added = _ADDED_MASKS and layer.compute_dtype in _ONEDNN_DTYPES
    kernel, bias = _fused_qkv(layer, fold_scale=not added)
    features, heads, size = layer._query_dense.kernel.shape
    scale = float(layer._inverse_sqrt_key_dim)

    def attend(x, shape, mask):
        x = tf.nn.bias_add(tf.matmul(x, kernel), bias)
        # [batch, length, 3, heads, size] -> [3, batch, heads, length, size]
        x = _transpose(tf.reshape(x, [shape[0], shape[1], 3, heads, size]), [2, 0, 3, 1, 4])
        q, k, v = tf.unstack(x)
        scores = tf.matmul(q, k, transpose_b=True)
        if added:
            context = _added_mask_context(scores, v, mask, scale)
        else:
            context = tf.matmul(layer._masked_softmax(scores, mask), v)
        return _transpose(context, [0, 2, 1, 3])

    return attend


def _added_mask_context(scores, values, mask, scale):
    """softmax(scores * scale + mask) @ values, the mask 0 for kept keys and
    -1e9 for masked ones (Keras' value). Written as `BatchMatMulV2 -> Mul ->
    AddV2`, the pattern grappler's oneDNN remapper computes as one
    `_MklFusedBatchMatMulV2`: Keras' two `where`s over the [batch, heads,
    length, length] scores go (BENCHMARKS.md "Masked scores inside the batch
    matmul"). Keras gives a query whose keys are all masked zero
    probabilities, where the added mask gives it the mean of the values:
    its context is zeroed instead (a [batch, heads, length, size] product)."""
    dtype = scores.dtype
    scores = scores * tf.constant(scale, dtype)
    if mask is None:
        return tf.matmul(tf.nn.softmax(scores), values)
    keep = mask if mask.dtype == tf.bool else mask > tf.cast(0.5, mask.dtype)  # as Keras' Softmax
    for _ in range(scores.shape.rank - keep.shape.rank):  # as `_masked_softmax`: heads, then queries
        keep = tf.expand_dims(keep, axis=-3)
    # The remapper fuses only a mask it knows to be [batch, 1, queries or 1,
    # keys]; grappler's shape inference loses the rank of Keras' mask.
    penalty = tf.where(keep, tf.constant(0, dtype), tf.constant(-1e9, dtype))
    scores = scores + tf.ensure_shape(penalty, [None, 1, None, None])
    context = tf.matmul(tf.nn.softmax(scores), values)
    return context * tf.cast(tf.reduce_any(keep, axis=-1, keepdims=True), dtype)


def _self_attention_call(layer, attend):
    """Self-attention through `attend` (`_fused_attention`) and the layer's
    output projection. Anything else (cross-attention, attention scores, a
    causal mask, dropout in training) runs the layer's own call."""
    features = layer._query_dense.kernel.shape[0]
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
        return layer._output_dense(attend(tf.reshape(query, [-1, features]), tf.shape(query), mask))

    return call


def _one_adapter_at_most(encoder):
    """No adapter, or one by name: a composition (per-row routing gathers
    each batch row's weights; parallel splits the batch) runs on 3-D tensors."""
    sites = [layer for layer in encoder._flatten_layers(include_self=False) if isinstance(layer, injection.AdapterSite)]
    return all(site.state is None or site.state.active is None or isinstance(site.state.active, str)
               for site in sites)


def _plain_projection(layer):
    return (type(layer) is keras.layers.EinsumDense and layer.equation in (_INTO_HEADS, _OUT_OF_HEADS)
            and layer.bias is not None and layer.activation in (None, keras.activations.linear))


def _plain_encoder(encoder, attention):
    # Its output projection takes 2-D inputs once rewritten (`_projection_2d_call`).
    return (type(encoder) is keras_hub.layers.TransformerEncoder and encoder._self_attention_layer is attention
            and _plain_projection(attention._output_dense) and all(hasattr(encoder, a) for a in _ENCODER_INTERNALS))


def _encoder_2d_call(encoder, attend):
    """keras-hub's `TransformerEncoder.call` on [batch * length, features]:
    the reshapes and shape ops around every projection go (389 ops per
    call where there were 477: BENCHMARKS.md "Folded bottlenecks and cheaper
    layer norms"). Training and attention scores run the layer's own call."""
    original = encoder.call
    attention = encoder._self_attention_layer
    heads, size = attention._query_dense.kernel.shape[1:]

    def call(inputs, padding_mask=None, attention_mask=None, training=None, return_attention_scores=False):
        if (training or return_attention_scores or getattr(inputs, "_keras_mask", None) is not None
                or not _one_adapter_at_most(encoder)):
            return original(inputs, padding_mask=padding_mask, attention_mask=attention_mask, training=training,
                            return_attention_scores=return_attention_scores)
        mask = attention._compute_attention_mask(
            inputs, inputs, attention_mask=merge_padding_and_attention_mask(inputs, padding_mask, attention_mask))
        shape = tf.shape(inputs)
        first = encoder.normalize_first
        x = residual = tf.reshape(inputs, [-1, inputs.shape[-1]])
        x = encoder._self_attention_layer_norm(x) if first else x
        with tf.name_scope(attention.name):  # the ops' names as under Keras' calls
            context = tf.reshape(attend(x, shape, mask), [-1, heads * size])
            with tf.name_scope(attention._output_dense.name):
                # Its rewritten call itself: Keras' call would check the 4-D input spec.
                x = attention._output_dense.call(context)
        x = encoder._self_attention_dropout(x, training=training) + residual
        x = residual = x if first else encoder._self_attention_layer_norm(x)
        x = encoder._feedforward_layer_norm(x) if first else x
        x = encoder._feedforward_output_dense(encoder._feedforward_intermediate_dense(x))
        x = encoder._feedforward_dropout(x, training=training) + residual
        x = x if first else encoder._feedforward_layer_norm(x)
        return tf.reshape(x, shape)

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
        if inputs.shape.rank == 2:  # heads already merged (`_encoder_2d_call`)
            return x
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


def _plain_layer_norm(layer):
    if type(layer) is not keras.layers.LayerNormalization:
        return False
    axis = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return layer.built and axis == [-1] and layer.center and layer.scale and not layer.rms_scaling


def _layer_norm_call(layer):
    """Keras' layer norm over the last axis, from the layer's own scale and
    offset, statistics in float32. In a float32 or bfloat16 call of at least
    `_ONEDNN_LAYER_NORM_ROWS` rows (`_sized_call`) as one oneDNN op
    (`_onednn_layer_norm`); otherwise in float32 ops (`_float32_layer_norm`)."""
    plain = _float32_layer_norm(layer)
    if not _onednn_dtype(layer):
        return plain
    onednn = _onednn_layer_norm(layer)

    def call(inputs):
        return onednn(inputs) if _large_call() else plain(inputs)

    return call


def _onednn_dtype(layer):
    return _ONEDNN_LAYER_NORMS and layer.compute_dtype in _ONEDNN_DTYPES


def _large_call():
    # Set while `_sized_call` traces its branches.
    return getattr(_TRACING, "large", _ONEDNN_LAYER_NORM_ROWS == 0)


def _sized_call(backbone):
    """The backbone's call as a `tf.cond` on its rows (batch x length): from
    `_ONEDNN_LAYER_NORM_ROWS` its layer norms are oneDNN's op, below it the
    plain ops. One cond per call (a cond per layer norm costs more than the
    choice saves at batch 1). Both branches are the same network; the
    SavedModel stores its variables once."""
    original = backbone.call

    def call(inputs, *args, **kwargs):
        ids = inputs.get("token_ids") if isinstance(inputs, dict) else None
        if ids is None:
            return original(inputs, *args, **kwargs)

        def branch(large):
            def traced():
                _TRACING.large = large
                try:
                    return original(inputs, *args, **kwargs)
                finally:
                    del _TRACING.large
            return traced

        return tf.cond(tf.size(ids) >= _ONEDNN_LAYER_NORM_ROWS, branch(True), branch(False))

    return call


def _float32_layer_norm(layer):
    """The layer norm in float32 ops, from float32 copies of the scale and
    offset (Keras casts both per call): 20-35% less time than Keras' ops
    (BENCHMARKS.md "Folded bottlenecks and cheaper layer norms")."""
    gamma = tf.Variable(tf.cast(layer.gamma, "float32"), trainable=False, name="layer_norm_gamma")
    beta = tf.Variable(tf.cast(layer.beta, "float32"), trainable=False, name="layer_norm_beta")

    def call(inputs):
        x = tf.cast(inputs, "float32")
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
        y = centred * tf.math.rsqrt(variance + layer.epsilon) * gamma + beta
        return tf.cast(y, layer.compute_dtype)

    return call


def _onednn_layer_norm(layer):
    """The layer norm as tf.keras 2 wrote it: a training-mode
    `FusedBatchNormV3` over `[1, rows, features, 1]` with unit scale and zero
    offset, then `* gamma + beta`. TensorFlow 2.21's remapper rewrites
    exactly this (the scale and offset as constants: it leaves variables
    alone) into one oneDNN layer norm, statistics in float32 for bfloat16
    inputs, where the plain formula takes 9 ops. That op has a large fixed
    cost (187 us at 16 rows), so it serves large calls only (`_sized_call`;
    BENCHMARKS.md "Masked scores inside the batch matmul, oneDNN's layer
    norm for large calls"). Without oneDNN the same ops run as they are.

    The scale and offset become constants of the traced graph (2 x 384
    values per layer norm in MiniLM); `FusedBatchNormV3` is called raw
    because `tf.nn.fused_batch_norm` raises epsilon to 1.001e-5."""
    gamma, beta = (tf.cast(w, layer.compute_dtype).numpy() for w in (layer.gamma, layer.beta))

    def call(inputs):
        # The remapper checks that the output has the input's shape; grappler's
        # shape inference loses the rank of the embeddings' sum.
        inputs = tf.ensure_shape(inputs, inputs.shape)
        shape = tf.shape(inputs)
        rows = tf.reduce_prod(shape[:-1])
        x = tf.reshape(inputs, tf.stack([1, rows, inputs.shape[-1], 1]))
        y = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.ones(tf.expand_dims(rows, 0)), offset=tf.zeros(tf.expand_dims(rows, 0)),
            mean=tf.constant([], "float32"), variance=tf.constant([], "float32"), epsilon=layer.epsilon,
            data_format="NCHW", is_training=True).y
        return tf.reshape(y, shape) * tf.constant(gamma) + tf.constant(beta)

    return call


def _fold_bottleneck_downs(encoder):
    """At each dropout site whose one unit is a plain bottleneck and whose
    input is a plain linear layer's output, compute the unit's
    down-projection in that layer's product (module doc). Returns the
    number of sites folded."""
    count = 0
    for producer_site, reader_site in _FOLDS:
        producer, site = (_sublayer(encoder, name) for name in (producer_site, reader_site))
        linear = _linear_2d(producer)
        if linear is None or not isinstance(site, injection.AdapterSite) or type(site.base) is not keras.layers.Dropout:
            continue
        if len(site.units) != 1 or not _foldable(next(iter(site.units.values()))):
            continue
        slot = {}
        producer.call = _folded_linear_call(producer, site, linear, slot)
        site.call = _folded_site_call(site, slot)
        count += 1
    return count


def _sublayer(encoder, site):
    try:
        parent, attribute = injection.resolve_site(encoder, site)
    except (ValueError, RuntimeError):  # a family without the site
        return None
    return getattr(parent, attribute)


def _linear_2d(layer):
    """A plain linear layer's (kernel as [inputs, outputs], bias), float32,
    and its output shape from its input's; None for any other layer."""
    linear = layer is not None and getattr(layer, "activation", None) in (None, keras.activations.linear)
    if type(layer) is keras.layers.Dense and layer.use_bias and linear:
        return tf.cast(layer.kernel, "float32"), tf.cast(layer.bias, "float32"), lambda shape: shape[:-1]
    if _plain_projection(layer) and layer.equation == _OUT_OF_HEADS:
        heads, size, outputs = layer.kernel.shape
        kernel = tf.reshape(tf.cast(layer.kernel, "float32"), [heads * size, outputs])
        return kernel, tf.cast(layer.bias, "float32"), lambda shape: shape[:-2]
    return None


def _foldable(unit):
    # Exactly the plain bottleneck: its subclasses read other inputs (the
    # normed sum, the block's input) or project otherwise (Compacter).
    return (type(unit) is BottleneckAdapter and type(unit.down) is keras.layers.Dense and unit.down.use_bias
            and unit.down.activation in (None, keras.activations.linear))


def _folded_linear_call(layer, site, linear, slot):
    """`layer`'s output `y = xW + b` and, while the site's unit is active,
    the unit's `down(y)` from one `[W, W W_d]` product (weights folded in
    float32, rounded once); `down(y)` waits in `slot` for the site."""
    kernel, bias, leading = linear
    name, unit = next(iter(site.units.items()))
    down_kernel, down_bias = tf.cast(unit.down.kernel, "float32"), tf.cast(unit.down.bias, "float32")
    folded_kernel = tf.Variable(tf.cast(tf.concat([kernel, kernel @ down_kernel], 1), layer.kernel.dtype),
                                trainable=False, name="folded_kernel")
    folded_bias = tf.Variable(
        tf.cast(tf.concat([bias, tf.linalg.matvec(down_kernel, bias, transpose_a=True) + down_bias], 0),
                layer.kernel.dtype), trainable=False, name="folded_bias")
    inputs_in, outputs = kernel.shape
    plain = layer.call

    def call(inputs, training=None):
        if training or site.state is None or site.state.active != name:
            return plain(inputs, training=training)
        shape = tf.shape(inputs)
        x = tf.nn.bias_add(tf.matmul(tf.reshape(inputs, [-1, inputs_in]), folded_kernel), folded_bias)
        y, down = tf.split(x, [outputs, unit.down.units], axis=1)
        if inputs.shape.rank != 2:
            y = tf.reshape(y, tf.concat([leading(shape), [outputs]], 0))
        slot["down"] = (y, down)
        return y

    return call


def _folded_site_call(site, slot):
    """The site's `y + up(activation(down(y)))` from the `down(y)` its
    linear layer left in `slot`, when `y` is that layer's output (the
    dropout between is the identity when serving); else its own call."""
    original = site.call
    name, unit = next(iter(site.units.items()))

    def call(inputs, training=None):
        y, down = slot.pop("down", (None, None))
        if y is not inputs or training or site.state is None or site.state.active != name:
            return original(inputs, training=training)
        residual = unit.up(unit.activation(down))
        return tf.add(y, tf.reshape(residual, tf.shape(y)))

    return call
