"""The serving copy: precision, merging and the 2-D feed-forward and projection rewrites."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TEXTS
from conftest import randomize_adapter_weights
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.serving import graph as serving_graph

LAYERS = 2  # tiny_backbone's


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


def _bias_adds_on_a_matmul(function):
    graph = function.graph
    return sum(
        1 for op in graph.get_operations()
        if op.type == "BiasAdd" and op.inputs[0].op.type == "MatMul" and "feedforward" in op.name
    )


def test_feed_forward_layers_become_matmul_then_bias_add_for_the_oneDNN_fusion(tiny_preset):
    model = _model(tiny_preset)
    fused = serving_graph.serving_copy(model, "float32")
    plain = serving_graph.serving_copy(model, "float32", fuse=False)
    # keras-hub's tensordot puts a Reshape between the MatMul and the bias.
    assert _bias_adds_on_a_matmul(_served(plain)) == 0
    assert _bias_adds_on_a_matmul(_served(fused)) == 2 * LAYERS
    # keras-hub's GELU (the form the fusion matches), not the training one.
    for copy in (fused, plain):
        types = [op.type for op in _served(copy).graph.get_operations() if "feedforward" in op.name]
        assert "Tanh" in types and "Sigmoid" not in types


def test_attention_projections_become_matmul_then_bias_add(tiny_preset):
    """Query, key, value and output projections leave einsum (transposes and a
    weight reorder per call) for MatMul -> BiasAdd, with the same answers."""
    model = _model(tiny_preset)
    projections = lambda copy: sum(  # noqa: E731
        1 for op in _served(copy).graph.get_operations()
        if op.type == "BiasAdd" and op.inputs[0].op.type == "MatMul" and "attention" in op.name
    )
    einsums = lambda copy: sum(op.type == "Einsum" for op in _served(copy).graph.get_operations())  # noqa: E731
    plain = serving_graph.serving_copy(model, "float32", fuse=False)
    fused = serving_graph.serving_copy(model, "float32")
    assert (projections(plain), projections(fused)) == (0, 4 * LAYERS)
    assert einsums(plain) >= 4 * LAYERS and einsums(fused) == einsums(plain) - 4 * LAYERS
    batch = token_batch(batch=3, length=10)
    batch["padding_mask"][1, 6:] = 0  # a padded row: the heads' reshapes keep rows and positions apart
    np.testing.assert_allclose(_run(_served(fused), batch), model.predict(batch, verbose=0), atol=1e-6)


def test_a_layer_an_adapter_wraps_is_not_rewritten(tiny_preset):
    # Unmerged (IA)^3 scales the intermediate dense's output through its site.
    model = _model(tiny_preset, method="ia3")
    copy = serving_graph.serving_copy(model, "float32", merge=False, fuse=False)
    # (IA)^3's sites: keys, values, the feed-forward output. The rest is rewritten: the
    # intermediate dense and the query and output projections of each layer.
    assert serving_graph.fuse_dense_layers(copy.backbone) == 3 * LAYERS
    batch = token_batch(batch=3, length=10)
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


def test_a_bfloat16_saved_model_is_half_the_weights_and_answers_like_float32(tiny_preset, tmp_path):
    from conftest import LABELS

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
    assert {d for d in stored.values() if d.is_floating} == {tf.bfloat16}
    text = tf.constant(TEXTS)
    got = loaded.signatures["serving_default"](text=text)
    want = tf.saved_model.load(f32).signatures["serving_default"](text=text)
    assert got["probabilities"].dtype == tf.float32
    gap = np.abs(got["probabilities"].numpy() - want["probabilities"].numpy()).max()
    assert 0 < gap < 3e-2, gap
    np.testing.assert_array_equal(got["label"].numpy(), want["label"].numpy())
