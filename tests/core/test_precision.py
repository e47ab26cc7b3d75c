"""The training precision that "auto" picks, from Python and the CLI."""

import json

import keras
import numpy as np
import pytest

import keras_adapters as ka
from keras_adapters.core import injection
from keras_adapters.core import precision


def test_default_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: True)
    assert precision.default_precision() == "mixed_bfloat16"
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: False)
    assert precision.default_precision() == "float32"
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind: ["gpu"])
    assert precision.default_precision() == "mixed_float16"
    with pytest.raises(ValueError, match="precision must be"):
        precision.resolve_precision("float8")


@pytest.mark.parametrize("fast_bf16, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_from_preset_auto_is_what_train_picks(tiny_preset, monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: fast_bf16)
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, dtype="auto")
    assert precision.backbone_precision(model.backbone) == expected
    # Without it, Keras' global policy (float32 here), as every Keras model.
    plain = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2)
    assert precision.backbone_precision(plain.backbone) == "float32"


def test_question_answering_trains_with_a_float32_residual_stream_on_cpus(tiny_preset, monkeypatch):
    """Since 0.12 in autocast_bfloat16, not float32: on SQuAD it scored as
    float32 in 27% less CPU time (BENCHMARKS.md)."""
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: True)
    qa, tagging = ka.tasks.get_task("question_answering"), ka.tasks.get_task("token-classification")
    assert precision.resolve_precision("auto", qa) == "autocast_bfloat16"
    assert precision.resolve_precision("auto", tagging) == "mixed_bfloat16"  # no GPU here
    assert precision.resolve_precision("mixed_bfloat16", qa) == "mixed_bfloat16"  # asked for
    with pytest.raises(TypeError, match="takes a Task"):  # a name would silently pass as bf16-safe
        precision.resolve_precision("auto", "question_answering")
    model = ka.AdapterQuestionAnswerer.from_preset(tiny_preset, method="lora", sequence_length=16, dtype="auto")
    assert precision.backbone_precision(model.backbone) == "autocast_bfloat16"
    tagger = ka.AdapterTokenClassifier.from_preset(tiny_preset, num_classes=2, sequence_length=16, dtype="auto")
    assert precision.backbone_precision(tagger.backbone) == "mixed_bfloat16"


# Real sentences: the error of a precision depends on real activations (random ids are not).
NEWS = [
    "The central bank raised interest rates by a quarter point on Thursday, citing persistent inflation.",
    "Manchester United came from two goals down to draw with Liverpool at Anfield.",
    "The minister resigned after the committee published its report on party funding.",
    "Apple unveiled a new phone with a faster chip and a better camera at its annual event.",
    "Scientists found that the glacier is retreating twice as fast as it was a decade ago.",
    "Shares in the airline fell sharply after it warned that fuel costs would hit profits.",
    "The film won three awards, including best director, at the festival in Cannes.",
    "Voters in the northern region will go to the polls next month to elect a new council.",
]


def test_autocast_keeps_the_residual_stream_in_float32(minilm_preset):
    """Under autocast_bfloat16 the matrix products run in bf16 (the output is
    not float32's) but the residual stream, layer norms and softmax stay
    float32, and GELU is computed in float32, so the encoder output is
    closer to float32's than Keras' mixed_bfloat16 (measured: 0.73% against
    1.14% relative error; 0.87% with GELU in bf16)."""
    outputs = {}
    for dtype in ("float32", "mixed_bfloat16", "autocast_bfloat16"):
        model = ka.AdapterTextClassifier.from_preset(minilm_preset, num_classes=2, method=None, sequence_length=64,
                                                     dtype=dtype)
        tokens = model.preprocessor(NEWS)
        sequence = model.backbone(tokens)["sequence_output"]
        outputs[dtype] = np.asarray(sequence, "float32")[np.asarray(tokens["padding_mask"])]
        if dtype == "autocast_bfloat16":
            assert sequence.dtype == "float32" and model.backbone.dtype_policy.name == "float32"
            assert precision.backbone_precision(model.backbone) == "autocast_bfloat16"
    reference = outputs["float32"]

    def error(dtype):
        return np.linalg.norm(outputs[dtype] - reference) / np.linalg.norm(reference)

    assert 2e-3 < error("autocast_bfloat16") < 0.8 * error("mixed_bfloat16")


def test_autocast_layers_compute_where_they_should(tiny_preset):
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, method="houlsby", dtype="autocast_bfloat16")
    for encoder in injection.encoder_layers(model.backbone):
        attention = injection.resolve_site(encoder, "self_attention")[0]._self_attention_layer
        attention = getattr(attention, "base", attention)
        assert attention.dtype_policy.name == "mixed_bfloat16"
        assert attention._softmax.dtype_policy.name == "float32"  # scores -> float32 probabilities
        assert encoder._self_attention_layer_norm.compute_dtype == "float32"
        assert encoder._feedforward_layer_norm.compute_dtype == "float32"
        assert encoder._feedforward_intermediate_dense.compute_dtype == "bfloat16"
        assert isinstance(encoder._feedforward_intermediate_dense.activation, precision.Float32Activation)
        for site in ("query", "key", "value", "attention_output", "feedforward_output_dense"):
            layer = getattr(*injection.resolve_site(encoder, site))
            assert getattr(layer, "base", layer).compute_dtype == "bfloat16", site
        assert attention._dropout_layer.compute_dtype == "bfloat16"
    # The activation survives Keras serialization.
    dense = model.backbone.get_layer("transformer_layer_0")._feedforward_intermediate_dense
    assert keras.layers.Dense.from_config(dense.get_config()).activation.activation is dense.activation.activation
    # A policy object is still a dtype from_preset takes.
    plain = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, dtype=keras.DTypePolicy("mixed_bfloat16"))
    assert precision.backbone_precision(plain.backbone) == "mixed_bfloat16"
    # The adapters sit at residual sites (the dropouts): float32 there.
    assert {u.compute_dtype for u in injection.units_of(model.backbone, model.adapter_names[0]).values()} == {"float32"}
    with pytest.raises(ValueError, match="before adapters are added"):
        precision.apply_autocast(model.backbone, "autocast_bfloat16")


def test_a_saved_model_keeps_autocast(tiny_preset, tmp_path):
    """`.keras` files rebuild the backbone from its config, where Keras keeps
    one policy for the whole backbone: the autocast layers' own policies
    come back from the model's recorded precision (0.12.0 reloaded them in
    float32)."""
    model = ka.AdapterTextClassifier.from_preset(
        tiny_preset, num_classes=2, method="lora", dtype="autocast_bfloat16", sequence_length=16)
    texts = ["the team won the cup today", "the bank profit fell today"]
    expected = np.asarray(model.predict(texts, verbose=0))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert precision.backbone_precision(restored.backbone) == "autocast_bfloat16"
    dense = restored.backbone.get_layer("transformer_layer_0")._feedforward_intermediate_dense
    assert isinstance(dense.base.activation, precision.Float32Activation)  # under a LoRA unit
    np.testing.assert_array_equal(np.asarray(restored.predict(texts, verbose=0)), expected)


@pytest.mark.parametrize("method", ["houlsby", "lora"])  # copied as it is / merged first
def test_an_export_computes_in_its_own_precision_not_the_training_one(tiny_preset, method):
    from keras_adapters.serving import graph

    model = ka.AdapterTextClassifier.from_preset(
        tiny_preset, num_classes=2, method=method, dtype="autocast_bfloat16", sequence_length=16)
    for served in ("float32", "bfloat16"):
        copy = graph.serving_copy(model, served)
        assert precision.backbone_precision(copy.backbone) == served
    assert precision.backbone_precision(model.backbone) == "autocast_bfloat16"  # the model is not changed


@pytest.mark.parametrize("method", ["houlsby", "lora", "prefix"])
def test_autocast_trains_float32_weights(tiny_preset, text_folder, tmp_path, method):
    model, summary = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method=method, epochs=2, batch_size=8,
        sequence_length=16, precision="autocast_bfloat16", validation_split=None, verbose=0, tensorboard=False,
        learning_rate=1e-2,
    )
    assert precision.backbone_precision(model.backbone) == "autocast_bfloat16"
    assert json.loads((tmp_path / "r" / "train_config.json").read_text())["precision"] == "autocast_bfloat16"
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]
    # The saved adapter, loaded in float32, predicts what the trained model does, up to bf16 rounding.
    reloaded = ka.AdapterTextClassifier.from_adapter(str(tmp_path / "r" / "adapter"))
    texts = ["the team won the cup today", "the bank profit fell today"]
    trained, f32 = (np.asarray(m.predict(texts, verbose=0)) for m in (model, reloaded))
    assert np.abs(trained - f32).max() < 0.05


def test_autocast_float16_scales_the_loss(tiny_preset, text_folder, tmp_path):
    model, _ = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method="lora", epochs=1, batch_size=8,
        sequence_length=16, precision="autocast_float16", validation_split=None, verbose=0, tensorboard=False,
    )
    assert precision.backbone_precision(model.backbone) == "autocast_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert int(model.optimizer.iterations.numpy()) == 3  # 24 texts, batch 8: every step applied


def test_float32_activation_rounds_once():
    """GELU of bf16 inputs: computed in float32 and rounded once, it equals
    float64's value rounded to bf16 up to one bf16 step (where float32 and
    float64 round differently); bf16 arithmetic is up to 146 steps off.
    (Below -3, float32's `1 + tanh` cancels: any float32 GELU is off there.)"""
    from keras import ops

    gelu = lambda x: keras.activations.gelu(x, approximate=True)  # noqa: E731  keras-hub BERT's
    x_bf16 = ops.cast(np.linspace(-3, 4, 4001).astype("float32"), "bfloat16")
    exact = np.asarray(x_bf16, "float64")
    exact = 0.5 * exact * (1 + np.tanh(np.sqrt(2 / np.pi) * (exact + 0.044715 * exact**3)))
    expected = np.asarray(ops.cast(exact.astype("float32"), "bfloat16"), "float32")
    step = np.spacing(np.abs(expected)) * 2**16  # one bf16 step (7 mantissa bits against float32's 23)

    def steps_off(values):
        return np.abs(np.asarray(values, "float32") - expected) / step

    ours = steps_off(precision.Float32Activation(gelu)(x_bf16))
    assert ours.max() <= 1 and np.mean(ours == 0) > 0.99
    assert steps_off(gelu(x_bf16)).max() > 10
