"""AdapterTextClassifier on a tiny preset: fit, inputs, heads, saving."""

import keras
import numpy as np
import pytest
from conftest import LABELS
from conftest import TEXTS

import keras_adapters as ka
from keras_adapters.injection import adapter_weights


def _model(preset, adapter="houlsby", **kwargs):
    kwargs.setdefault("num_classes", 4)
    kwargs.setdefault("sequence_length", 16)
    return ka.AdapterTextClassifier.from_preset(preset, adapter=adapter, **kwargs)


def _snapshot(weights):
    return {w.path: w.numpy().copy() for w in weights}


def test_fit_on_strings_trains_only_what_the_method_trains(tiny_preset):
    keras.utils.set_random_seed(0)
    # Bottleneck 4 (not 16 // 16 = 1), so no adapter is a single dead ReLU.
    model = _model(tiny_preset, ka.HoulsbyConfig(bottleneck_size=4))
    trainable_ids = {id(w) for w in model.trainable_weights}
    before_trainable = _snapshot(model.trainable_weights)
    before_frozen = _snapshot([w for w in model.weights if id(w) not in trainable_ids])
    model.fit(TEXTS, LABELS, epochs=2, batch_size=4, verbose=0)
    after = _snapshot(model.weights)
    changed = {p for p, v in before_trainable.items() if not np.array_equal(v, after[p])}
    assert changed == set(before_trainable)  # adapters, head and layer norms all moved
    assert any("layer_norm" in p for p in changed) and "logits/kernel" in changed
    for path, value in before_frozen.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_model_backbone_is_the_adapted_backbone(tiny_preset):
    model = _model(tiny_preset, "lora")
    assert isinstance(model.backbone, keras.Model)
    assert len(adapter_weights(model.backbone)) == 2 * 2 * 2


def test_predict_takes_strings_and_token_inputs_alike(tiny_preset):
    model = _model(tiny_preset, "ia3")
    from_text = model.predict(TEXTS[:3], verbose=0)
    tokens = model.preprocessor(TEXTS[:3])
    from_tokens = model.predict(dict(tokens), verbose=0)
    np.testing.assert_allclose(from_text, from_tokens, atol=1e-6)
    # segment_ids and padding_mask may be left out.
    only_ids = model.predict({"token_ids": np.asarray(tokens["token_ids"])}, verbose=0)
    np.testing.assert_allclose(only_ids, from_text, atol=1e-6)
    assert from_text.shape == (3, 4)
    np.testing.assert_allclose(from_text.sum(axis=1), 1.0, atol=1e-5)


def test_multi_label_head_uses_sigmoid_and_trains(tiny_preset):
    keras.utils.set_random_seed(1)
    model = _model(tiny_preset, "lora", num_classes=3, multi_label=True)
    y = np.eye(3, dtype="float32")[LABELS % 3]
    y[0, 1] = 1.0
    history = model.fit(TEXTS, y, epochs=3, batch_size=4, verbose=0)
    probs = model.predict(TEXTS, verbose=0)
    assert probs.shape == (8, 3)
    assert np.all((probs > 0) & (probs < 1))
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids
    assert "binary_accuracy" in history.history


def test_mean_pooling_ignores_padding(tiny_preset):
    model = _model(tiny_preset, "head", pooling="mean")
    tokens = {k: np.array(v) for k, v in model.preprocessor(TEXTS[:1]).items()}
    short = model.predict(tokens, verbose=0)
    # Change what sits under padding: the output must not move.
    padded = tokens["padding_mask"][0] == 0
    assert padded.any()
    tokens["token_ids"][0, padded] = 7
    np.testing.assert_allclose(model.predict(tokens, verbose=0), short, atol=1e-6)


def test_keras_save_and_load_model_round_trip(tiny_preset, tmp_path):
    keras.utils.set_random_seed(2)
    model = _model(tiny_preset, "lora", class_names=["sport", "business", "tech", "politics"])
    model.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)
    expected = model.predict(TEXTS, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ka.AdapterTextClassifier)
    assert loaded.adapter_config == model.adapter_config
    assert loaded.class_names == ["sport", "business", "tech", "politics"]
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0), expected, atol=1e-6)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    # Training can go on from the loaded model, optimizer state included.
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    loaded.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merge_adapter_keeps_predictions(tiny_preset, method, tmp_path):
    keras.utils.set_random_seed(3)
    model = _model(tiny_preset, method)
    model.fit(TEXTS, LABELS, epochs=3, batch_size=4, verbose=0)
    unmerged = model.predict(TEXTS, verbose=0)
    model.merge_adapter()
    assert model.adapter_config is None and model.merged_adapter["method"] == method
    assert ka.parameter_report(model)["groups"]["adapter"]["total"] == 0
    merged = model.predict(TEXTS, verbose=0)
    np.testing.assert_allclose(merged, unmerged, atol=1e-4)
    model.save(str(tmp_path / "merged.keras"))
    loaded = keras.models.load_model(str(tmp_path / "merged.keras"))
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0), merged, atol=1e-6)
    with pytest.raises(ka.AdapterFormatError, match="no adapter"):
        model.save_adapter(str(tmp_path / "adapter"))


def test_parameter_report_counts_groups(tiny_preset):
    model = _model(tiny_preset, "houlsby")
    report = ka.parameter_report(model)
    groups = report["groups"]
    assert report["total"] == sum(g["total"] for g in groups.values()) == model.count_params()
    assert report["trainable"] == sum(g["trainable"] for g in groups.values())
    # hidden 16 // 16 = bottleneck 1: per adapter 16*1+1 + 1*16+16 = 49.
    assert groups["adapter"]["total"] == 2 * 2 * 49
    assert groups["backbone_trainable"]["trainable"] == 2 * 2 * 32
    assert groups["head"]["trainable"] == 16 * 4 + 4
    assert groups["backbone_frozen"]["trainable"] == 0
    assert report["trainable_fraction"] == pytest.approx(report["trainable"] / report["total"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes >= 2"),
        ({"num_classes": 0}, "positive integer"),
        ({"class_names": ["a", "b"]}, "class_names must be 4 distinct names"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"adapter": "prefix"}, "Unknown adapter method 'prefix'"),
    ],
)
def test_bad_arguments_get_clear_errors(tiny_preset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(tiny_preset, **kwargs)


def test_default_learning_rates_follow_the_method(tiny_preset):
    lrs = {}
    for method in ("houlsby", "lora", "full"):
        model = _model(tiny_preset, method)
        lrs[method] = float(model.optimizer.learning_rate.numpy())
    assert lrs["full"] == pytest.approx(3e-5)
    assert lrs["houlsby"] == pytest.approx(1e-3) and lrs["lora"] == pytest.approx(1e-3)
