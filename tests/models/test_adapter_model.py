"""One `AdapterModel` holding three tasks on one backbone (the README's
example): each adapter answers as a model of its task alone would, after
saving and loading, and from one SavedModel with a signature per task."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_adapters as ka
from conftest import TEXTS
from conftest import randomize_adapter_weights

TAGS = ["O", "B-ORG", "I-ORG"]
NEWS = ["business", "politics", "sport", "tech"]


@pytest.fixture(scope="module")
def three_tasks(tiny_preset):
    keras.utils.set_random_seed(11)
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, class_names=NEWS, method="houlsby",
                                        sequence_length=16)
    model.add_adapter("ner", "lora", task="token_classification", class_names=TAGS)
    model.add_adapter("qa", "lora", task="question_answering", stride=3)
    randomize_adapter_weights(model.backbone)
    return model


def test_each_adapter_does_its_task(three_tasks, tiny_preset, tmp_path):
    model = three_tasks
    assert [model.heads[n].task for n in model.adapter_names] == [
        "text_classification", "token_classification", "question_answering"]
    model.set_active_adapters("default")
    news = model.predict(TEXTS[:3], verbose=0)
    model.set_active_adapters("ner")
    entities = model.predict_entities(["the bank won the cup"])
    with pytest.raises(ValueError, match=r"answer\(\) needs an active question-answering adapter"):
        model.answer("the news", "the bank")
    model.set_active_adapters("qa")
    answer = model.answer("the news", "the bank won the cup today")
    # Each adapter saved alone and loaded into a fresh model answers the same.
    for name in model.adapter_names:
        model.save_adapter(str(tmp_path / name), name)
    alone = ka.AdapterModel.from_adapter(str(tmp_path / "default"))
    np.testing.assert_allclose(alone.predict(TEXTS[:3], verbose=0), news, atol=1e-6)
    tagger = ka.AdapterModel.from_adapter(str(tmp_path / "ner"))
    assert tagger.predict_entities(["the bank won the cup"]) == entities
    reader = ka.AdapterModel.from_adapter(str(tmp_path / "qa"))
    assert reader.answer("the news", "the bank won the cup today") == pytest.approx(answer)


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_one_saved_model_serves_the_three_tasks(three_tasks, tmp_path):
    model = three_tasks
    out = ka.export_multi_adapter_saved_model(model, str(tmp_path / "three"))
    model.set_active_adapters("default")
    news = model.predict(TEXTS[:2], verbose=0)
    model.set_active_adapters("ner")
    entities = model.predict_entities(TEXTS[:2])
    model.set_active_adapters("qa")
    answers = model.answer(["the news"] * 2, TEXTS[:2])
    code = (
        "import sys, json, tensorflow as tf, tensorflow_text\n"
        "s = tf.saved_model.load(sys.argv[1]).signatures\n"
        "texts = tf.constant(json.loads(sys.argv[2]))\n"
        "out = {'keys': sorted(s.keys()),\n"
        "       'classify': s['classify'](text=texts, adapter=tf.constant(['default'] * 2))['probabilities'].numpy().tolist(),\n"
        "       'tag': s['tag_ner'](text=texts)['num_entities'].numpy().tolist(),\n"
        "       'tag_alias': s['classify_ner'](text=texts)['num_entities'].numpy().tolist(),\n"
        "       'answer': [a.decode() for a in s['answer_qa'](question=tf.constant(['the news'] * 2), context=texts)['answer'].numpy()]}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, out, json.dumps(TEXTS[:2])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"classify", "classify_default", "tag_ner", "classify_ner", "answer_qa", "classify_qa"} <= set(served["keys"])
    np.testing.assert_allclose(np.asarray(served["classify"])[:, :4], news, atol=1e-5)
    assert served["tag"] == served["tag_alias"] == [len(e) for e in entities]
    assert served["answer"] == [a["answer"] for a in answers]


def test_the_old_names_are_the_same_model(three_tasks):
    assert issubclass(ka.AdapterTextClassifier, ka.AdapterModel)
    assert issubclass(ka.AdapterTokenClassifier, ka.AdapterTextClassifier)
    assert issubclass(ka.AdapterQuestionAnswerer, ka.AdapterTextClassifier)
    import keras_adapters.text_classifier as old  # the 0.8 module path

    assert old.AdapterTextClassifier is ka.AdapterTextClassifier
    config = three_tasks.get_config()
    again = ka.AdapterModel.from_config(config)
    assert again.adapter_names == three_tasks.adapter_names
