"""A routed signature per task in one SavedModel: every task's adapters share
one backbone pass, each row answered as its adapter alone answers it.

Two adapters per task, differing in what their rows must not borrow from each
other: sequence length, classes/tags/labels, thresholds, QA window settings.
The SavedModel is reloaded in a fresh process (TensorFlow only) and each
row of a mixed batch is checked against the Keras model with that row's
adapter active.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_adapters as ka
from keras_adapters.tasks.routing import adapter_length
from conftest import TEXTS
from conftest import randomize_adapter_weights

NEWS = ["business", "politics", "sport", "tech"]
QUESTIONS = ["who won the cup", "what rose today", "what was released", "who lost the vote"]
CONTEXTS = [
    "the team won the cup today in a great match and the star party rose",
    "stocks fell as the market rose and the bank profit rose today",
    "new phone software released today with a new chip",
    "the minister lost the vote in the election today",
]


@pytest.fixture(scope="module")
def every_task(tiny_preset):
    keras.utils.set_random_seed(5)
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, class_names=NEWS, method="houlsby",
                                        sequence_length=16)
    model.add_adapter("short_news", "lora", num_classes=2, class_names=["x", "y"], sequence_length=6)
    model.add_adapter("ner", "lora", task="token_classification", class_names=["O", "B-ORG", "I-ORG"])
    model.add_adapter("ner_short", "houlsby", task="token_classification", sequence_length=7,
                      class_names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    model.add_adapter("qa", "lora", task="question_answering", stride=3)
    model.add_adapter("qa_short", "houlsby", task="question_answering", sequence_length=12, stride=2,
                      max_question_length=4, max_answer_length=2)
    model.add_adapter("topics", "lora", task="multi_label_classification", class_names=["a", "b", "c"],
                      thresholds=[0.3, 0.5, 0.7])
    model.add_adapter("flags", "houlsby", task="multi_label_classification", class_names=["p", "q"],
                      thresholds=[0.45, 0.55], sequence_length=5)
    model.add_adapter("nli", "lora", task="pair_classification", num_classes=3)
    model.add_adapter("nli_short", "houlsby", task="pair_classification", num_classes=2, sequence_length=8)
    randomize_adapter_weights(model.backbone, scale=0.3)
    for head in model.heads.values():  # heads away from their small initial values
        for w in head.weights:
            w.assign(w.numpy() * 8.0 + 0.05)
    return model


def _alone(model, name, call):
    """`call()` with adapter `name` active, reading texts at its own sequence
    length (what loading its adapter folder gives)."""
    model.set_active_adapters(name)
    model.preprocessor.sequence_length = adapter_length(model, name)
    try:
        return call()
    finally:
        model.preprocessor.sequence_length = 16


def _references(model):
    """Each task's rows, each answered by its adapter alone (Keras)."""
    texts = TEXTS[:4]
    rows = {
        "classify": ["default", "short_news", "short_news", "default"],
        "tag": ["ner_short", "ner", "ner_short", "ner"],
        "answer": ["qa", "qa_short", "qa_short", "qa"],
        "label": ["flags", "topics", "topics", "flags"],
        "classify_pairs": ["nli", "nli_short", "nli", "nli_short"],
    }
    out = {"rows": rows}
    out["classify"] = [_alone(model, n, lambda: model.predict([t], verbose=0)[0]).tolist()
                       for n, t in zip(rows["classify"], texts)]
    out["tag"] = [_alone(model, n, lambda: model.predict_entities([t])[0]) for n, t in zip(rows["tag"], CONTEXTS)]
    out["answer"] = [_alone(model, n, lambda: model.answer([q], [c])[0])
                     for n, q, c in zip(rows["answer"], QUESTIONS, CONTEXTS)]
    out["label"] = [_alone(model, n, lambda: model.predict([t], verbose=0)[0]).tolist()
                    for n, t in zip(rows["label"], texts)]
    out["classify_pairs"] = [_alone(model, n, lambda: model.predict(([q], [c]), verbose=0)[0]).tolist()
                             for n, q, c in zip(rows["classify_pairs"], QUESTIONS, CONTEXTS)]
    return out


SERVE = r"""
import sys, json, numpy as np, tensorflow as tf, tensorflow_text
s = tf.saved_model.load(sys.argv[1]).signatures
case = json.loads(sys.argv[2])
rows, texts, questions, contexts = (tf.constant(case[k]) for k in ("rows", "texts", "questions", "contexts"))
def plain(x):
    return [plain(v) for v in x] if isinstance(x, list) else x.decode() if isinstance(x, bytes) else x
def run(name, **inputs):
    return {k: plain(v.numpy().tolist()) for k, v in s[name](**inputs).items()}
print(json.dumps({
    "keys": sorted(s.keys()),
    "classify": run("classify", text=texts, adapter=tf.constant(case["classify"])),
    "tag": (run("tag", text=contexts, adapter=tf.constant(case["tag"]))),
    "answer": (run("answer", question=questions, context=contexts, adapter=tf.constant(case["answer"]))),
    "label": (run("label", text=texts, adapter=tf.constant(case["label"]))),
    "classify_pairs": run("classify_pairs", text_a=questions, text_b=contexts, adapter=tf.constant(case["classify_pairs"])),
    "tag_ner_short": (run("tag_ner_short", text=contexts)),
    "label_flags": (run("label_flags", text=texts)),
    "empty": run("tag", text=tf.constant([], tf.string), adapter=tf.constant([], tf.string))["num_entities"],
}))
"""


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_each_task_routes_its_adapters_in_one_saved_model(every_task, tmp_path):
    model = every_task
    expected = _references(model)
    out = ka.export_multi_adapter_saved_model(model, str(tmp_path / "all"))
    case = {**expected["rows"], "texts": TEXTS[:4], "questions": QUESTIONS, "contexts": CONTEXTS, "rows": []}
    done = subprocess.run([sys.executable, "-c", SERVE, out, json.dumps(case)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    routed = {"classify", "classify_pairs", "tag", "answer", "label"}
    assert routed | {f"{r}_token_ids" for r in routed} <= set(served["keys"])
    assert {"tag_ner", "tag_ner_short", "answer_qa", "label_topics", "classify_nli_short"} <= set(served["keys"])

    for i, want in enumerate(expected["classify"]):
        got = served["classify"]["probabilities"][i]
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-5)
        assert not any(got[len(want):])
    for i, want in enumerate(expected["classify_pairs"]):
        np.testing.assert_allclose(served["classify_pairs"]["probabilities"][i][: len(want)], want, atol=1e-5)

    tag = served["tag"]
    for i, want in enumerate(expected["tag"]):
        count = tag["num_entities"][i]
        assert count == len(want)
        assert tag["entity_type"][i][:count] == [e["type"] for e in want]
        assert tag["entity_text"][i][:count] == [e["text"] for e in want]
        np.testing.assert_allclose(tag["score"][i][:count], [e["score"] for e in want], atol=1e-5)
    assert sum(len(e) for e in expected["tag"]) > 0  # the check saw entities
    assert {e["type"] for e in expected["tag"][0] + expected["tag"][2]} <= {"PER", "LOC"}

    for i, want in enumerate(expected["answer"]):
        assert served["answer"]["answer"][i] == want["answer"]
        assert (served["answer"]["start"][i], served["answer"]["end"][i]) == (want["start"], want["end"])
        np.testing.assert_allclose(served["answer"]["score"][i], want["score"], rtol=1e-4)

    heads = model.heads
    for i, (name, want) in enumerate(zip(expected["rows"]["label"], expected["label"])):
        scores = served["label"]["scores"][i]
        np.testing.assert_allclose(scores[: len(want)], want, atol=1e-5)
        predicted = [s >= t for s, t in zip(want, heads[name].thresholds)]
        assert served["label"]["predicted"][i][: len(want)] == predicted
        assert not any(served["label"]["predicted"][i][len(want):])
        assert [x for x in served["label"]["labels"][i] if x] == [
            c for c, p in zip(heads[name].label_names(), predicted) if p]
    # The per-adapter signatures are the routed graph, narrowed to the adapter's own columns.
    assert len(served["label_flags"]["scores"][0]) == 2
    count = served["tag"]["num_entities"][0]
    assert served["tag_ner_short"]["num_entities"][0] == count
    assert served["tag_ner_short"]["entity_type"][0][:count] == served["tag"]["entity_type"][0][:count]
    assert served["empty"] == []


@pytest.mark.slow  # 16-21 s: the default run stays under 15 minutes
def test_routed_rows_do_not_depend_on_their_neighbours(every_task, tmp_path):
    """Each row is what it is alone, whichever adapters share its batch."""
    import tensorflow as tf

    out = ka.export_multi_adapter_saved_model(every_task, str(tmp_path / "m"), names=["qa", "qa_short"],
                                              task_signatures=False)
    answer = tf.saved_model.load(out).signatures["answer"]
    assert set(tf.saved_model.load(out).signatures) == {"answer", "answer_token_ids", "serving_default"}
    mixed = answer(question=tf.constant(QUESTIONS), context=tf.constant(CONTEXTS),
                   adapter=tf.constant(["qa", "qa_short", "qa", "qa_short"]))
    for i, name in enumerate(["qa", "qa_short", "qa", "qa_short"]):
        one = answer(question=tf.constant(QUESTIONS[i:i + 1]), context=tf.constant(CONTEXTS[i:i + 1]),
                     adapter=tf.constant([name]))
        assert one["answer"].numpy()[0] == mixed["answer"].numpy()[i]
        np.testing.assert_allclose(one["score"].numpy()[0], mixed["score"].numpy()[i], rtol=1e-5)
    with pytest.raises(Exception, match="Unknown adapter name.*nope.*serves: qa, qa_short"):
        answer(question=tf.constant(["q"]), context=tf.constant(["c"]), adapter=tf.constant(["nope"]))


def test_a_route_takes_adapters_of_one_task(every_task):
    with pytest.raises(ValueError, match="A Route serves adapters of one task"):
        every_task.set_active_adapters(ka.Route("ner", "topics"))
        every_task({"token_ids": np.ones((1, 4), "int32"), "segment_ids": np.zeros((1, 4), "int32"),
                    "padding_mask": np.ones((1, 4), bool), "adapter_id": np.zeros(1, "int32")})
    with pytest.raises(ValueError, match="routed TFLite model serves adapters of one task"):
        ka.export_tflite(every_task, "/tmp/never-written", names=["ner", "topics"], sequence_length=8)


def test_routed_tflite_of_taggers_matches_keras(every_task, tmp_path):
    from keras_adapters.serving.export import run_tflite
    from keras_adapters.serving.export import tflite_signature_runner
    from conftest import token_batch

    model = every_task
    path = ka.export_tflite(model, str(tmp_path / "lite"), names=["ner", "ner_short"], sequence_length=8)
    entries = json.loads((tmp_path / "lite" / "adapters.json").read_text())["adapters"]
    assert [(e["name"], e["task"], len(e["labels"]), e["sequence_length"]) for e in entries] == [
        ("ner", "token_classification", 3, 8), ("ner_short", "token_classification", 5, 7)]
    tokens = {**token_batch(batch=4, length=8), "adapter_id": np.array([0, 1, 1, 0], np.int32)}
    got = run_tflite(tflite_signature_runner(path), tokens)
    for i, name in enumerate(["ner", "ner_short", "ner_short", "ner"]):
        model.set_active_adapters(name)
        want = model.predict({k: v[i:i + 1] for k, v in tokens.items() if k != "adapter_id"}, verbose=0)[0]
        np.testing.assert_allclose(got[i][:, : want.shape[-1]], want, atol=1e-5)
        assert not got[i][:, want.shape[-1]:].any()


def test_pairs_are_packed_at_each_rows_own_length(tiny_preset):
    """As the preprocessor of each length packs them (the training pipeline)."""
    import keras_hub

    from keras_adapters.tasks.classification import PairInputs

    a = ["the team won the cup today in a great match", "bank", "new phone"]
    b = ["stocks fell as the market rose", "the minister lost the vote in the election", ""]
    lengths = [8, 16, 8]
    packed = PairInputs(keras_hub.models.TextClassifierPreprocessor.from_preset(tiny_preset, sequence_length=16),
                        [8, 16])(a, b, np.array([0, 1, 0]))
    for i, length in enumerate(lengths):
        own = keras_hub.models.TextClassifierPreprocessor.from_preset(tiny_preset, sequence_length=length)
        want = own(([a[i]], [b[i]]), y=None)
        for key in ("token_ids", "segment_ids", "padding_mask"):
            got = np.asarray(packed[key][i])
            np.testing.assert_array_equal(got[:length], np.asarray(want[key][0]))
            assert not got[length:].any()
    assert np.asarray(packed["token_ids"][0][7]) == 3  # cut at 8: the last [SEP]
    # One length that is not the preprocessor's: packed at that length all the same.
    alone = PairInputs(keras_hub.models.TextClassifierPreprocessor.from_preset(tiny_preset, sequence_length=16), 8)
    assert alone(a, b)["token_ids"].shape[1] == 8


def test_routed_token_signature_names_labels_and_errors_name_the_right_signature(every_task, tmp_path):
    import tensorflow as tf

    model = every_task
    out = ka.export_multi_adapter_saved_model(model, str(tmp_path / "lean"), names=["default", "short_news", "ner"],
                                              task_signatures=False)
    served = tf.saved_model.load(out).signatures
    assert set(served) == {"classify", "classify_token_ids", "tag", "tag_token_ids", "serving_default"}
    tokens = {k: tf.constant(np.asarray(v)) for k, v in model.preprocessor(TEXTS[:2]).items()}
    tokens["padding_mask"] = tf.cast(tokens["padding_mask"], tf.int32)
    got = served["classify_token_ids"](**tokens, adapter=tf.constant(["short_news", "default"]))
    assert [x.decode() for x in got["label"].numpy()] == [
        ["x", "y"][int(np.argmax(got["probabilities"][0, :2]))], NEWS[int(np.argmax(got["probabilities"][1]))]]
    with pytest.raises(Exception, match=r"Unknown adapter name\(s\): ner\. This signature serves: default, "
                                         r"short_news\. \(tag serves ner\.\)"):
        served["classify"](text=tf.constant(["a"]), adapter=tf.constant(["ner"]))
