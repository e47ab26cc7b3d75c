"""The serving copy: precision, merging, the 2-D feed-forward and projection rewrites and the fused self-attention."""

import collections
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TEXTS
from conftest import randomize_adapter_weights
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.backbones import activations
from keras_adapters.serving import graph as serving_graph
from keras_adapters.serving.graph import PRECISIONS

# oneDNN's graph rewrites are on by default on x86 (TF_ENABLE_ONEDNN_OPTS=0 turns them off).
_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"

LAYERS = 2  # tiny_backbone's
LAYER_NORMS = 2 * LAYERS + 1  # two a layer, and the embeddings'
#: The rows from which an export's layer norms are oneDNN's (the autouse `_one_graph` sets 0).
SIZED_ROWS = serving_graph._ONEDNN_LAYER_NORM_ROWS


@pytest.fixture(autouse=True)
def _one_graph(monkeypatch):
    """Every call's layer norms as oneDNN's op, without the cond on the rows
    that picks them (`_sized_call`): the graph tests read one graph. The
    cond's own tests set it back."""
    monkeypatch.setattr(serving_graph, "_ONEDNN_LAYER_NORM_ROWS", 0)


def _model(preset, method="houlsby", seed=0):
    keras.utils.set_random_seed(seed)
    model = ka.AdapterTextClassifier.from_preset(preset, num_classes=4, method=method, sequence_length=16)
    randomize_adapter_weights(model.backbone, scale=0.3)
    return model


def _served(model):
    """`model` traced as export traces it (a concrete function: grappler's rewrites apply)."""
    serving = ka.tasks.TaskServing(model, None)
    return tf.function(
        serving.serve_token_ids, input_signature=serving.token_signature, autograph=False
    ).get_concrete_function()


def _run(function, batch):
    return function(**{k: tf.constant(np.asarray(v, np.int32)) for k, v in batch.items()})["probabilities"].numpy()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_half_precision_copy_stores_and_computes_in_it_and_leaves_the_model_alone(tiny_preset, precision):
    model = _model(tiny_preset)
    batch = token_batch(batch=4, length=12)
    before = model.predict(batch, verbose=0)
    copy = serving_graph.serving_copy(model, precision)
    assert {w.dtype for w in copy.weights} == {precision}
    assert {w.dtype for w in model.weights} == {"float32"}
    np.testing.assert_array_equal(model.predict(batch, verbose=0), before)
    served = _run(_served(copy), batch)
    assert served.dtype == np.float32
    gap = np.abs(served - before).max()
    # Half precision rounds (so the copy differs), within what 8 (bf16) or
    # 11 (f16) mantissa bits allow on these small logits.
    assert 0 < gap < (3e-2 if precision == "bfloat16" else 5e-3), gap
    np.testing.assert_array_equal(served.argmax(-1), before.argmax(-1))


def test_the_float32_copy_serves_what_the_model_computes(tiny_preset):
    model = _model(tiny_preset)
    batch = token_batch(batch=4, length=12)
    plain = serving_graph.serving_copy(model, "float32", fuse=False)
    fused = serving_graph.serving_copy(model, "float32")
    reference = model.predict(batch, verbose=0)
    np.testing.assert_allclose(_run(_served(plain), batch), reference, atol=1e-6)
    np.testing.assert_allclose(_run(_served(fused), batch), reference, atol=1e-6)


def _bias_adds_on_a_matmul(function, scope=r"feedforward_(intermediate|output)_dense(_\d+)?/BiasAdd"):
    graph = function.graph
    return sum(
        1 for op in graph.get_operations()
        if op.type == "BiasAdd" and op.inputs[0].op.type == "MatMul" and re.search(scope, op.name)
    )


def test_feed_forward_and_adapter_layers_become_matmul_then_bias_add_for_the_oneDNN_fusion(tiny_preset, monkeypatch):
    # The adapters' down-projections as their own layers (not folded into the product before them).
    monkeypatch.setattr(serving_graph, "_FOLD_BOTTLENECK_DOWNS", False)
    model = _model(tiny_preset)
    fused = serving_graph.serving_copy(model, "float32")
    plain = serving_graph.serving_copy(model, "float32", fuse=False)
    # keras-hub's tensordot puts a Reshape between the MatMul and the bias.
    assert _bias_adds_on_a_matmul(_served(plain)) == 0
    assert _bias_adds_on_a_matmul(_served(fused)) == 2 * LAYERS
    # The Houlsby adapters' down and up projections too (two adapters a layer).
    adapters = r"/(down|up)(_\d+)?/"
    assert (_bias_adds_on_a_matmul(_served(plain), adapters), _bias_adds_on_a_matmul(_served(fused), adapters)) == (
        0, 4 * LAYERS)
    # The checkpoint's exact GELU, in the erfc form grappler fuses into the MatMul
    # (`_FusedMatMul` with BiasAdd and GeluExact), not the tanh approximation.
    # The chain itself: the training GELU's custom gradient (an IdentityN with a
    # gradient override) would stand between the chain and the MatMul.
    assert model.backbone.transformer_layers[0]._feedforward_intermediate_dense.activation is activations.gelu
    for copy in (fused, plain):
        graph_ops = _served(copy).graph.get_operations()
        types = [op.type for op in graph_ops if "feedforward" in op.name]
        assert "Erfc" in types and "Tanh" not in types and "Sigmoid" not in types
        assert [op.name for op in graph_ops if "_gradient_op_type" in op.node_def.attr] == []
    # And it takes the BiasAdd's output itself: a Reshape in between also hides the pattern.
    erfcs = [op for op in _served(fused).graph.get_operations() if op.type == "Erfc" and "feedforward" in op.name]
    assert erfcs and all(_gelu_input(op) == "BiasAdd" for op in erfcs)


def _sequence(model, batch):
    """The backbone's float32 sequence output (the near-uniform tiny head would hide the encoder)."""
    inputs = {k: tf.constant(np.asarray(batch[k], np.int32)) for k in ("token_ids", "padding_mask", "segment_ids")}
    function = tf.function(lambda x: model.backbone(x)["sequence_output"], autograph=False)
    concrete = function.get_concrete_function({k: tf.TensorSpec([None, None], tf.int32) for k in inputs})
    matmuls = sum(op.type == "MatMul" for op in concrete.graph.get_operations())
    return tf.cast(concrete(inputs), tf.float32).numpy(), matmuls


@pytest.mark.parametrize("method, sites", [("houlsby", 2), ("pfeiffer", 1)])
def test_a_lone_bottlenecks_down_projection_is_computed_in_the_product_before_it(tiny_preset, monkeypatch,
                                                                                 method, sites):
    """`down(xW + b)` as the extra columns of one `[W, W W_d]` product: one
    matmul fewer per bottleneck, the same encoder output as Keras computes
    (float32), and no more bf16 rounding than the two products."""
    model = _model(tiny_preset, method)
    batch = token_batch(batch=3, length=10)
    batch["padding_mask"][1, 6:] = 0
    reference, _ = _sequence(model, batch)
    served = {}
    for fold in (True, False):
        monkeypatch.setattr(serving_graph, "_FOLD_BOTTLENECK_DOWNS", fold)
        for precision in ("float32", "bfloat16"):
            served[fold, precision] = _sequence(serving_graph.serving_copy(model, precision), batch)
    assert served[False, "float32"][1] - served[True, "float32"][1] == sites * LAYERS
    model.set_active_adapters(None)
    adapters_effect = np.abs(_sequence(model, batch)[0] - reference).max()
    assert adapters_effect > 0.1  # a fold that lost the down-projection or its bias would show
    np.testing.assert_allclose(served[True, "float32"][0], reference, atol=1e-5)
    folded, plain = (np.abs(served[f, "bfloat16"][0] - reference).max() for f in (True, False))
    assert folded <= 1.5 * plain, (folded, plain)


def test_a_site_with_several_adapters_keeps_its_plain_products(tiny_preset, monkeypatch):
    """Folding there would store the base weights once per adapter."""
    model = _model(tiny_preset)
    model.add_adapter("second", "houlsby")
    randomize_adapter_weights(model.backbone, scale=0.3)
    batch = token_batch(batch=2, length=8)
    counts = {}
    for fold in (True, False):
        monkeypatch.setattr(serving_graph, "_FOLD_BOTTLENECK_DOWNS", fold)
        for active in model.adapter_names:
            model.set_active_adapters(active)
            reference, _ = _sequence(model, batch)
            served, counts[fold, active] = _sequence(serving_graph.serving_copy(model, "float32"), batch)
            np.testing.assert_allclose(served, reference, atol=1e-5)
    assert len(set(counts.values())) == 1, counts


def _weight_casts(layer, x):
    graph = tf.function(layer, autograph=False).get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
    return sum(op.type == "Cast" and op.inputs[0].op.type == "ReadVariableOp" for op in graph.get_operations())


def _layer_norm(dtype):
    """A layer norm with non-trivial scale and offset (grappler drops a `* 1`
    and a `+ 0`, and with them the pattern it fuses) and its input."""
    layer = keras.layers.LayerNormalization(epsilon=1e-12, dtype=dtype)
    rng = np.random.default_rng(0)
    x = tf.constant(3 * rng.standard_normal((2, 5, 64)) + 1, dtype)
    layer.build(x.shape)
    layer.gamma.assign(1 + rng.standard_normal(64))
    layer.beta.assign(rng.standard_normal(64))
    return layer, x


def _traced(call, x):
    """`call` as a served graph runs it: traced for any batch and length."""
    return tf.function(call, input_signature=[tf.TensorSpec([None, None, x.shape[-1]], x.dtype)], autograph=False)


@pytest.mark.parametrize("dtype, rows", [("float32", 0), ("bfloat16", 0), ("float32", SIZED_ROWS),
                                         ("bfloat16", SIZED_ROWS), ("float16", 0)])
def test_a_served_layer_norm_computes_what_keras_does(dtype, rows, monkeypatch):
    """Both formulations (rows 0: oneDNN's; outside `_sized_call`'s large
    branch: float32 ops; float16 has the ops only)."""
    monkeypatch.setattr(serving_graph, "_ONEDNN_LAYER_NORM_ROWS", rows)
    layer, x = _layer_norm(dtype)
    keras_casts, want = _weight_casts(layer, x), layer(x).numpy().astype(np.float32)
    assert serving_graph._plain_layer_norm(layer)
    layer.call = serving_graph._layer_norm_call(layer)
    got = _traced(layer.call, x)(x)
    assert got.dtype == x.dtype and (keras_casts, _weight_casts(layer, x)) == ((0, 2, 2)[PRECISIONS.index(dtype)], 0)
    got = got.numpy().astype(np.float32)
    if dtype == "float32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        return
    # Statistics in float32, summed in another order: at most one rounding step apart.
    ulp = 2.0 ** (np.floor(np.log2(np.abs(want) + 1e-30)) - (7 if dtype == "bfloat16" else 10))
    assert np.all(np.abs(got - want) <= ulp)
    assert np.mean(got == want) > 0.9


def _grappler_nodes(function):
    """A concrete function's graph after grappler's optimizers (the remapper
    among them), placed on the CPU as a served graph is: {name: NodeDef}."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.framework import meta_graph
    from tensorflow.python.grappler import tf_optimizer

    graph = function.graph
    graph_def = graph.as_graph_def()
    for node in graph_def.node:
        node.device = "/job:localhost/replica:0/task:0/device:CPU:0"
    item = meta_graph.create_meta_graph_def(graph_def=graph_def, graph=graph)
    item.collection_def["train_op"].node_list.value.extend(t.name.split(":")[0] for t in graph.outputs)
    return {node.name: node for node in tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), item).node}


def _grappler_op_types(function):
    return collections.Counter(node.op for node in _grappler_nodes(function).values())


@pytest.mark.skipif(not _ONEDNN, reason="TensorFlow without oneDNN's graph rewrites")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_grappler_fuses_a_served_layer_norm_into_one_onednn_op(dtype):
    layer, x = _layer_norm(dtype)
    traced = lambda call: _traced(call, x).get_concrete_function()  # noqa: E731
    assert _grappler_op_types(traced(layer.call))["_MklLayerNorm"] == 0  # Keras' ops stay as they are
    types = _grappler_op_types(traced(serving_graph._layer_norm_call(layer)))
    assert types["_MklLayerNorm"] == 1 and types["FusedBatchNormV3"] == types["Mul"] == types["AddV2"] == 0, types


def test_only_a_plain_layer_norm_over_the_last_axis_is_rewritten():
    for settings in ({"axis": 1}, {"center": False}, {"scale": False}):
        layer = keras.layers.LayerNormalization(**settings)
        layer.build((2, 5, 8))
        assert not serving_graph._plain_layer_norm(layer), settings
    assert not serving_graph._plain_layer_norm(keras.layers.Dense(4))


def _gelu_input(erfc):
    """The op GELU's chain starts from, walking back from its Erfc."""
    op = erfc.inputs[0].op
    while op.type in ("Mul", "Neg", "Cast"):
        op = op.inputs[0].op
    return op.type


def _attention_op_list(function, op_type, inputs=None):
    """Ops of `op_type` (with a first input from an `inputs` op) inside the
    attention layers (not their layer norms: `self_attention_layer_norm`)."""
    return [
        op for op in function.graph.get_operations()
        if op.type == op_type and re.search(r"self_attention_layer(_\d+)?/", op.name)
        and (inputs is None or op.inputs[0].op.type == inputs)
    ]


def _attention_ops(function, op_type, inputs=None):
    return len(_attention_op_list(function, op_type, inputs))


def test_self_attention_becomes_one_projection_and_two_transposes(tiny_preset):
    """Keras' four projection einsums and the attention products' transposes
    become one query/key/value MatMul -> BiasAdd, the output projection's
    MatMul -> BiasAdd and two transposes, with the same answers, padded rows
    included."""
    model = _model(tiny_preset)
    plain = _served(serving_graph.serving_copy(model, "float32", fuse=False))
    fused = _served(serving_graph.serving_copy(model, "float32"))
    assert _attention_ops(plain, "BiasAdd", "MatMul") == 0 and _attention_ops(plain, "Einsum") == 4 * LAYERS
    assert _attention_ops(fused, "BiasAdd", "MatMul") == 2 * LAYERS and _attention_ops(fused, "Einsum") == 0
    assert (_attention_ops(plain, "Transpose"), _attention_ops(fused, "Transpose")) == (5 * LAYERS, 2 * LAYERS)
    assert _transposed_dtypes(fused) == {tf.int32}  # oneDNN takes no integer transpose
    batch = token_batch(batch=3, length=10)
    batch["padding_mask"][1, 6:] = 0  # a padded row: the heads' reshapes keep rows and positions apart
    np.testing.assert_allclose(_run(fused, batch), model.predict(batch, verbose=0), atol=1e-6)


@pytest.mark.skipif(not _ONEDNN, reason="TensorFlow without oneDNN's graph rewrites")
@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_grappler_scales_and_masks_the_attention_scores_inside_the_batch_matmul(tiny_preset, precision):
    """Each layer's scores `q k^T * scale + mask` are one oneDNN batch matmul,
    which the softmax reads: no `where` over the scores before or after it.
    And every layer norm, the embeddings' included, is one oneDNN op."""
    nodes = _grappler_nodes(_served(serving_graph.serving_copy(_model(tiny_preset), precision)))
    types = collections.Counter(node.op for node in nodes.values())
    assert types["_MklFusedBatchMatMulV2"] == LAYERS and types["BatchMatMulV2"] == LAYERS, types
    softmaxes = [n for n in nodes.values() if n.op == "Softmax" and "self_attention_layer" in n.name]
    assert [nodes[n.input[0]].op for n in softmaxes] == ["_MklFusedBatchMatMulV2"] * LAYERS
    assert all(nodes[i.split(":")[0]].op != "Softmax" for n in nodes.values() if n.op == "SelectV2" for i in n.input)
    assert types["_MklLayerNorm"] == LAYER_NORMS and types["FusedBatchNormV3"] == 0, types


def _branch_op_types(function):
    """{branch: op type counts} of the served graph's one cond."""
    graph_def = function.graph.as_graph_def()
    conds = [n for n in graph_def.node if n.op in ("If", "StatelessIf")]
    assert len(conds) == 1, [n.name for n in conds]
    library = {f.signature.name: f for f in graph_def.library.function}
    return {branch: collections.Counter(n.op for n in library[conds[0].attr[branch].func.name].node_def)
            for branch in ("then_branch", "else_branch")}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_large_call_takes_onednn_layer_norms_and_both_sizes_answer_like_keras(tiny_preset, monkeypatch,
                                                                                 precision):
    """One cond on the rows (batch x length) picks the formulation: oneDNN's
    layer norm has a large fixed cost, the float32 ops grow with the rows."""
    monkeypatch.setattr(serving_graph, "_ONEDNN_LAYER_NORM_ROWS", 64)
    model = _model(tiny_preset)
    function = _served(serving_graph.serving_copy(model, precision))
    branches = _branch_op_types(function)
    assert branches["then_branch"]["FusedBatchNormV3"] == LAYER_NORMS  # one `_MklLayerNorm` each after grappler
    assert branches["else_branch"]["FusedBatchNormV3"] == 0 and branches["else_branch"]["Rsqrt"] == LAYER_NORMS
    if precision == "bfloat16":
        return
    small, large = token_batch(batch=3, length=10), token_batch(batch=8, length=10)  # 30 rows and 80
    for tokens in (small, large):
        np.testing.assert_allclose(_run(function, tokens), model.predict(tokens, verbose=0), atol=1e-6)
    # Which branch runs at which size: a oneDNN formulation that zeroes its
    # output changes the large call's answer only.
    monkeypatch.setattr(serving_graph, "_onednn_layer_norm", lambda layer: tf.zeros_like)
    function = _served(serving_graph.serving_copy(model, precision))
    np.testing.assert_allclose(_run(function, small), model.predict(small, verbose=0), atol=1e-6)
    assert np.abs(_run(function, large) - model.predict(large, verbose=0)).max() > 1e-3


def _transposed_dtypes(function):
    return {op.get_attr("T") for op in _attention_op_list(function, "Transpose")}


@pytest.mark.parametrize("precision", ["bfloat16", "float16", "float32"])
def test_the_attention_transposes_move_the_same_bits_as_integers(tiny_preset, monkeypatch, precision):
    """The fused attention transposes its tensors viewed as integers of their
    width (oneDNN's float transpose costs 20x more at batch 1): bit for bit
    what a float transpose gives, padded rows included."""
    model = _model(tiny_preset)
    batch = token_batch(batch=3, length=10)
    batch["padding_mask"][2, 4:] = 0
    served = {}
    for integer in (True, False):
        monkeypatch.setattr(serving_graph, "_INTEGER_TRANSPOSES", integer)
        function = _served(serving_graph.serving_copy(model, precision))
        served[integer] = _run(function, batch)
        expected = {tf.int32 if precision == "float32" else tf.int16} if integer else {tf.as_dtype(precision)}
        assert _transposed_dtypes(function) == expected
    np.testing.assert_array_equal(served[True], served[False])


def test_the_fused_attention_of_the_real_minilm_serves_what_keras_computes(minilm_preset):
    """12 heads of 32 on real sentences of different lengths (padded rows):
    the fused float32 graph against the Keras model, and the bf16 one
    against the unfused bf16 graph (the fusion adds no rounding of note)."""
    keras.utils.set_random_seed(0)
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, num_classes=5, method="houlsby", sequence_length=48)
    randomize_adapter_weights(model.backbone, scale=0.05)
    texts = ["Shares in the bank fell 5% after it reported lower profits for the third quarter.",
             "The striker scored twice.", "Parliament will vote on the new budget next week, ministers said."]
    batch = {k: keras.ops.convert_to_numpy(v) for k, v in model.preprocessor(texts).items()}
    assert batch["padding_mask"].sum(axis=1).min() < batch["padding_mask"].sum(axis=1).max()
    served = lambda copy: _run(_served(copy), batch)  # noqa: E731
    reference = model.predict(batch, verbose=0)
    assert np.ptp(reference, axis=1).min() > 1e-2  # not a uniform head, which would hide the encoder
    np.testing.assert_allclose(served(serving_graph.serving_copy(model, "float32")), reference, atol=1e-5)
    fused, plain = (served(serving_graph.serving_copy(model, "bfloat16", fuse=f)) for f in (True, False))
    assert np.abs(fused - reference).max() <= 2 * np.abs(plain - reference).max() + 1e-3


def test_the_fused_attention_runs_the_layers_own_call_for_anything_but_self_attention(monkeypatch):
    keras.utils.set_random_seed(0)
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.1)  # as BERT's
    x, y = (tf.constant(a) for a in np.random.RandomState(0).normal(size=(2, 2, 5, 8)).astype("float32"))
    mask = np.tril(np.ones((2, 5, 5), bool))
    mask[1, 2, :] = False  # a row whose keys are all masked
    layer(x, x)
    for p in (layer._query_dense, layer._key_dense, layer._value_dense):
        p.bias.assign(np.random.RandomState(1).normal(size=p.bias.shape))  # zero biases would hide a bias bug
    masked_keras = keras.layers.Embedding(10, 8, mask_zero=True)
    masked_keras.build((None,))
    tokens = tf.constant([[3, 4, 0, 0, 0], [5, 6, 7, 0, 0]])
    calls = {  # name: (call, whether the fused path answers it)
        "masked self-attention": (lambda: layer(x, x, attention_mask=mask), True),
        "self-attention": (lambda: layer(x, x), True),
        "self-attention, inference": (lambda: layer(x, x, training=False), True),
        "cross-attention": (lambda: layer(x, y), False),
        "another key": (lambda: layer(x, x, key=y), False),
        "scores": (lambda: layer(x, x, return_attention_scores=True), False),
        "causal": (lambda: layer(x, x, use_causal_mask=True), False),
        "Keras mask": (lambda: (lambda e: layer(e, e))(masked_keras(tokens)), False),
    }
    outputs = lambda call: [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(call())]  # noqa: E731
    expected = {name: outputs(call) for name, (call, _) in calls.items()}
    fused = []
    plain = serving_graph._plain_self_attention
    monkeypatch.setattr(serving_graph, "_plain_self_attention", lambda *a: fused.append(plain(*a)) or fused[-1])
    layer.call = serving_graph._self_attention_call(layer, serving_graph._fused_attention(layer))
    for name, (call, takes_fused_path) in calls.items():
        fused.clear()
        got = outputs(call)
        assert fused == [takes_fused_path], name
        for g, w in zip(got, expected[name], strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6, err_msg=name)
    # The fused path read the mask: its answer differs from the unmasked one.
    assert np.abs(expected["masked self-attention"][0] - expected["self-attention"][0]).max() > 1e-3
    # Training with dropout runs the layer's own call (its dropout), never the fused one.
    fused.clear()
    layer(x, x, training=True)
    assert fused == [False]


def test_a_layer_without_attention_dropout_is_not_fused():
    """Keras computes it by `dot_product_attention`, which answers a fully
    masked row differently from `_masked_softmax`."""
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.0)
    layer(np.zeros((1, 3, 8), "float32"), np.zeros((1, 3, 8), "float32"))
    assert not serving_graph._fusable_attention(layer)
    layer._dropout = 0.1
    assert serving_graph._fusable_attention(layer)


def test_a_saved_model_stores_what_its_graphs_read_once(tiny_preset, tmp_path, monkeypatch):
    """The fused query/key/value variables replace the layers' own in the
    SavedModel: it stores as many values as the unfused graph reads (not the
    layer norms a Houlsby adapter replaces with its own, nor dropout seeds;
    the layer norms' float32 copies replace theirs, and the oneDNN layer
    norms' scales and offsets are constants of the graph). Folding a
    feed-forward adapter's down-projection into the output product stores
    `W W_d`, [intermediate, bottleneck], where `W_d` was [hidden, bottleneck]."""
    monkeypatch.setattr(serving_graph, "_ONEDNN_LAYER_NORM_ROWS", SIZED_ROWS)  # as exports run
    model = _model(tiny_preset)
    plain = serving_graph.serving_copy(model, "float32", fuse=False)
    captured = {id(tensor) for tensor, _ in _served(plain).graph.captures}
    read = sum(int(np.prod(w.shape)) for w in plain.weights if id(w.value.handle) in captured)
    assert 0 < read < sum(int(np.prod(w.shape)) for w in plain.weights)
    out = ka.export_saved_model(model, str(tmp_path / "sm"))
    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    stored = sum(int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items()
                 if dtypes[name].is_floating)
    backbone = model.backbone
    bottleneck = model.adapter_config().size_for(backbone.hidden_dim)
    assert stored == read + LAYERS * (backbone.intermediate_dim - backbone.hidden_dim) * bottleneck


def test_a_layer_an_adapter_wraps_is_not_rewritten(tiny_preset):
    # Unmerged (IA)^3 scales the intermediate dense's output through its site.
    model = _model(tiny_preset, method="ia3")
    copy = serving_graph.serving_copy(model, "float32", merge=False, fuse=False)
    # (IA)^3's sites: keys, values, the feed-forward output. The rest is rewritten: the
    # intermediate dense and the query and output projections of each layer; the
    # attention is not fused (its keys and values go through their sites).
    assert serving_graph.fuse_dense_layers(copy.backbone) == 3 * LAYERS + LAYER_NORMS
    batch = token_batch(batch=3, length=10)
    np.testing.assert_allclose(_run(_served(copy), batch), model.predict(batch, verbose=0), atol=1e-6)


def test_inside_prefix_tunings_attention_site_the_plain_projections_are_rewritten(tiny_preset):
    """Prefix tuning wraps the attention layer and its key and value
    projections: the query and output projections inside are rewritten, the
    attention is not fused (its keys carry the prefix)."""
    model = _model(tiny_preset, method="prefix")
    copy = serving_graph.serving_copy(model, "float32", merge=False, fuse=False)
    # Feed-forward, query and output projections: 4 a layer; and the prefix's
    # reparameterisation MLP (a decoder a layer, one shared encoder), plain Dense layers too.
    assert serving_graph.fuse_dense_layers(copy.backbone) == 4 * LAYERS + LAYERS + 1 + LAYER_NORMS
    assert _bias_adds_on_a_matmul(_served(copy), r"/(query|attention_output)(_\d+)?/BiasAdd") == 2 * LAYERS
    batch = token_batch(batch=3, length=10)
    batch["padding_mask"][1, 6:] = 0
    np.testing.assert_allclose(_run(_served(copy), batch), model.predict(batch, verbose=0), atol=1e-6)


def test_lora_is_merged_in_float32_before_rounding(tiny_preset):
    model = _model(tiny_preset, method="lora")
    batch = token_batch(batch=4, length=12)
    copy = serving_graph.serving_copy(model, "bfloat16")
    assert copy.merged_adapter is not None and model.merged_adapter is None
    # Merged, the feed-forward layers are plain again, so they are rewritten too.
    assert _bias_adds_on_a_matmul(_served(copy)) == 2 * LAYERS
    reference = model.predict(batch, verbose=0)
    gap = np.abs(_run(_served(copy), batch) - reference).max()
    assert 0 < gap < 3e-2, gap


def test_an_unknown_precision_names_the_choices(tiny_preset, tmp_path):
    model = _model(tiny_preset)
    with pytest.raises(ValueError, match="float32, bfloat16, float16; got 'int8'"):
        ka.export_saved_model(model, str(tmp_path / "sm"), precision="int8")
    assert not os.path.exists(tmp_path / "sm")


def _folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_a_bfloat16_saved_model_is_half_the_weights_and_answers_like_float32(tiny_preset, tmp_path, monkeypatch):
    from conftest import LABELS

    monkeypatch.setattr(serving_graph, "_ONEDNN_LAYER_NORM_ROWS", SIZED_ROWS)  # as exports run

    model = _model(tiny_preset)
    model.fit(TEXTS, LABELS, epochs=2, batch_size=4, verbose=0)
    f32 = ka.export_saved_model(model, str(tmp_path / "f32"))
    bf16 = ka.export_saved_model(model, str(tmp_path / "bf16"), precision="bfloat16")
    weights = [_folder_bytes(os.path.join(p, "variables")) for p in (f32, bf16)]
    # Half the tensor bytes; the checkpoint's index and object graph are the
    # same size in both (MiniLM: 88 MB -> 44 MB, BENCHMARKS.md).
    assert weights[1] < 0.75 * weights[0], weights
    loaded = tf.saved_model.load(bf16)
    stored = tf.train.load_checkpoint(os.path.join(bf16, "variables", "variables")).get_variable_to_dtype_map()
    shapes = tf.train.load_checkpoint(os.path.join(bf16, "variables", "variables")).get_variable_to_shape_map()
    # Only the small calls' layer norms' scales and offsets are float32 (they
    # compute in it; the large calls' oneDNN layer norms read constants).
    float32 = [shapes[name] for name, dtype in stored.items() if dtype == tf.float32]
    assert {d for d in stored.values() if d.is_floating} == {tf.bfloat16, tf.float32}
    assert len(float32) == 2 * LAYER_NORMS and all(s == [model.backbone.hidden_dim] for s in float32), float32
    text = tf.constant(TEXTS)
    got = loaded.signatures["serving_default"](text=text)
    want = tf.saved_model.load(f32).signatures["serving_default"](text=text)
    assert got["probabilities"].dtype == tf.float32
    gap = np.abs(got["probabilities"].numpy() - want["probabilities"].numpy()).max()
    assert 0 < gap < 3e-2, gap
    np.testing.assert_array_equal(got["label"].numpy(), want["label"].numpy())
