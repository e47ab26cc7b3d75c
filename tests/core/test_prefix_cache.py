"""Frozen-prefix caching: which layers are skipped, and the same model either way."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LABELS
from conftest import randomize_adapter_weights

import keras_adapters as ka
from keras_adapters.core import injection
from keras_adapters.runs import folder as runs
from keras_adapters.core.prefix_cache import PREFIX_DEPTH
from keras_adapters.core.prefix_cache import PREFIX_OUTPUT

TOP = "transformer_layer_1"  # the second (top) of tiny_backbone's 2 layers


def _model(preset, method):
    keras.utils.set_random_seed(0)
    return ka.AdapterTextClassifier.from_preset(preset, num_classes=4, method=method, sequence_length=16)


@pytest.mark.parametrize(
    "method, depth",
    [
        (ka.HoulsbyConfig(target_layers=TOP), 1),
        (ka.LoRAConfig(target_layers=TOP), 1),
        ("houlsby", 0),
        ("full", 0),
        ("prompt", 0),  # acts before the first layer
        ("head", 2),
    ],
)
def test_the_frozen_prefix_is_what_no_active_adapter_touches(tiny_preset, method, depth):
    model = _model(tiny_preset, method)
    assert injection.frozen_prefix_depth(model.backbone) == depth


def test_a_second_adapter_counts_only_when_active(tiny_preset):
    model = _model(tiny_preset, ka.HoulsbyConfig(target_layers=TOP))
    model.add_adapter("low", "houlsby", num_classes=4)
    assert injection.frozen_prefix_depth(model.backbone) == 1
    model.set_active_adapters(ka.Stack("default", "low"))
    assert injection.frozen_prefix_depth(model.backbone) == 0


def _dataset(model, batch=3):
    tokens = model.preprocessor(["the team won the cup", "stocks fell", "new chip", "vote today", "a goal", "bank"])
    return tf.data.Dataset.from_tensor_slices((dict(tokens), LABELS[:6])).batch(batch)


def test_the_model_gives_the_same_outputs_from_the_cache(tiny_preset):
    model = _model(tiny_preset, ka.HoulsbyConfig(target_layers=TOP))
    randomize_adapter_weights(model.backbone, scale=0.3)
    data = _dataset(model)
    data.class_names, data.privacy_unit = ["a", "b", "c", "d"], "question"  # as a private QA run reads them
    cached = ka.cache_frozen_prefix(model, data, shuffle=False)
    assert (cached.class_names, cached.privacy_unit) == (data.class_names, "question")
    got = np.concatenate([model(x, training=False).numpy() for x, _ in cached])
    want = np.concatenate([model(x, training=False).numpy() for x, _ in _dataset(model)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    x, y = next(iter(cached))
    assert set(x) == {PREFIX_OUTPUT, "padding_mask", PREFIX_DEPTH} and x[PREFIX_OUTPUT].shape[-1] == 16


def test_training_on_the_cache_trains_only_the_top_and_helps(tiny_preset):
    model = _model(tiny_preset, ka.HoulsbyConfig(target_layers=TOP))
    data = _dataset(model)
    cached = ka.cache_frozen_prefix(model, data, seed=0)
    before = {w.path: w.numpy().copy() for w in model.weights}
    first = model.evaluate(data, verbose=0, return_dict=True)["loss"]
    model.fit(cached, epochs=15, verbose=0)
    assert model.evaluate(data, verbose=0, return_dict=True)["loss"] < first
    changed = {p for p, v in before.items() if not np.array_equal(v, _value(model, p))}
    assert changed and all("transformer_layer_1" in p or "head" in p for p in changed), sorted(changed)


def _value(model, path):
    return next(w.numpy() for w in model.weights if w.path == path)


def test_a_cache_for_other_adapters_is_refused(tiny_preset):
    model = _model(tiny_preset, ka.HoulsbyConfig(target_layers=TOP))
    cached = ka.cache_frozen_prefix(model, _dataset(model))
    model.add_adapter("all", "houlsby", num_classes=4)
    model.train_adapter("all")
    with pytest.raises(tf.errors.InvalidArgumentError, match="cache them again"):
        model.predict(cached.map(lambda x, y: x), verbose=0)


def test_nothing_to_cache_says_how_to_target_the_top_layers(tiny_preset):
    model = _model(tiny_preset, "houlsby")
    with pytest.raises(ValueError, match="target_layers='transformer_layer_"):
        ka.cache_frozen_prefix(model, _dataset(model))


def test_train_with_cached_frozen_layers_from_the_cli(tiny_preset, text_folder, tmp_path, capsys):
    from keras_adapters import cli

    run = tmp_path / "run"
    common = ["train", str(text_folder), "-o", str(run), "--backbone", tiny_preset, "--epochs", "2",
              "--batch-size", "4", "--sequence-length", "16", "--quiet", "--cache-frozen-layers"]
    assert cli.main(common) == 2  # Houlsby in every layer: nothing to cache
    assert "target_layers='transformer_layer_" in capsys.readouterr().err
    assert cli.main(common + ["--method-option", f"target_layers={TOP}", "--overwrite"]) == 0
    config = json.loads((run / "train_config.json").read_text())
    assert config["cache_frozen_layers"] is True
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["val_loss"]))
    # The adapter is used like any other: raw text, every layer run.
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), str(text_folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    files = sorted(text_folder.glob("*/*.txt"))
    model = runs.load_run(run)
    predicted = model.predict([f.read_text() for f in files], verbose=0).argmax(-1)
    names = sorted(folder.name for folder in text_folder.iterdir() if folder.is_dir())
    right = sum(names[i] == f.parent.name for i, f in zip(predicted, files))
    assert result["num_examples"] == len(files) and result["accuracy"] == pytest.approx(right / len(files))
