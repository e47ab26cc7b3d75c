"""AdapterQuestionAnswerer: answers with character offsets, adapter folders, one backbone with other tasks."""

import json

import keras
import numpy as np
import pytest

import keras_adapters as ka
from keras_adapters.runs import evaluation
from keras_adapters.tasks.question_answering import data as qa_data
from keras_adapters.runs import folder as runs


@pytest.fixture(scope="module")
def answerer(qa_run):
    return runs.load_run(qa_run[0])


def _model(preset, method="lora", **kwargs):
    return ka.AdapterQuestionAnswerer.from_preset(preset, method=method, sequence_length=16, **kwargs)


def test_training_finds_answers_in_held_out_articles(answerer, qa_run):
    history = json.loads((qa_run[0] / "history.json").read_text())
    assert history["accuracy"][-1] >= 0.95  # start and end tokens of the training windows
    report = evaluation.answer_report(answerer, qa_run[2])
    assert report["num_examples"] == 24 and report["exact_match"] >= 95 and report["f1"] >= 95


def test_answers_are_characters_of_the_context(answerer):
    context = "Zoë → the film won the great award today"
    found = answerer.answer("the news", context)
    assert found["answer"] == "great award" == context[found["start"] : found["end"]]
    assert found["start"] == context.index("great")
    # The score is p_start("great") x p_end("award") of the model's own forward pass.
    example = {"question": "the news", "context": context, "answers": []}
    ((x, _, _),) = list(qa_data.window_dataset([example], answerer.windows(), with_offsets=True).batch(8))
    probabilities = answerer.predict(x, verbose=0)
    assert probabilities.shape[0] == 1  # one window
    ids, vocab = list(x["token_ids"][0].numpy()), answerer.preprocessor.tokenizer.get_vocabulary()
    start, end = ids.index(vocab.index("great")), ids.index(vocab.index("award"))
    np.testing.assert_allclose(found["score"], probabilities[0, 0, start] * probabilities[0, 1, end], rtol=1e-5)
    # A long context: the answer is in its last window.
    long = "the team won the cup " * 4 + "the great award"
    (far, empty) = answerer.answer(["the news", "the news"], [long, ""])
    assert far["answer"] == "great award" and far["start"] == long.index("great")
    assert empty == {"answer": "", "start": 0, "end": 0, "score": 0.0}
    assert answerer.answer([], []) == []
    with pytest.raises(ValueError, match="equally long lists"):
        answerer.answer(["a", "b"], ["c"])


def test_raw_texts_go_to_answer(answerer):
    with pytest.raises(ValueError, match=r"answers questions: ask with model.answer\(questions, contexts\)"):
        answerer.predict(["the news"], verbose=0)


def test_adapter_folders_and_keras_files_keep_the_answerer(answerer, tiny_preset, tmp_path):
    answerer.save_adapter(tmp_path / "qa")
    task = json.loads((tmp_path / "qa" / "adapter_config.json").read_text())["task"]
    assert (task["type"], task["stride"], task["max_question_length"]) == ("question_answering", 4, 4)
    loaded = ka.AdapterQuestionAnswerer.from_adapter(tmp_path / "qa", preset=tiny_preset)
    questions, contexts = ["the news"] * 2, ["a great award", "the team won the cup the great award today"]
    assert loaded.answer(questions, contexts) == answerer.answer(questions, contexts)
    answerer.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(restored, ka.AdapterQuestionAnswerer)
    got, want = restored.answer(questions, contexts), answerer.answer(questions, contexts)
    assert [g["answer"] for g in got] == [w["answer"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], rtol=1e-5)


def test_one_backbone_carries_a_question_answerer_and_a_classifier(tiny_preset):
    model = _model(tiny_preset, stride=3)
    model.add_adapter("topic", "houlsby", num_classes=4, task="text_classification")
    model.add_adapter("qa2", "lora", max_answer_length=5)  # follows the first head: question answering
    assert [model.heads[n].task for n in model.adapter_names] == [
        "question_answering", "text_classification", "question_answering"]
    assert (model.heads["qa2"].stride, model.heads["qa2"].max_answer_length) == (3, 5)
    model.set_active_adapters("topic")
    assert model.predict(["the team won"], verbose=0).shape == (1, 4)
    model.set_active_adapters("qa2")
    assert set(model.answer("the news", "the great award")) == {"answer", "start", "end", "score"}
    with pytest.raises(ValueError, match="needs num_classes"):
        model.add_adapter("tags", "lora", task="token_classification")
    with pytest.raises(TypeError, match="only question-answering heads take"):
        model.add_adapter("t2", "lora", num_classes=2, task="text_classification", stride=3)


def test_the_head_gives_start_and_end_distributions_over_kept_tokens():
    head = ka.QuestionAnsweringHead(dropout=0.0)
    head.build(8)
    sequence = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[True] * 5, [True, True, True, False, False]])
    probabilities = np.asarray(head(sequence, None, mask))
    assert probabilities.shape == (2, 2, 5)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-6)
    assert (probabilities[1, :, 3:] == 0).all()
    kernel, bias = (np.asarray(w, np.float64) for w in head.logits.weights)
    logits = sequence[1, :3].astype(np.float64) @ kernel + bias  # float64 reference
    expected = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(probabilities[1, :, :3], expected.T, rtol=1e-5)
    assert ka.QuestionAnsweringHead.from_config(head.get_config()).task_config() == head.task_config()
    for bad, message in (({"stride": -1}, "stride must be an integer >= 0"),
                         ({"max_answer_length": 0}, "max_answer_length must be an integer >= 1"),
                         ({"num_classes": 3}, "has the 2 outputs"),
                         ({"task": "token_classification"}, "answers questions, not")):
        with pytest.raises(ValueError, match=message):
            ka.QuestionAnsweringHead(**bad)


def test_fit_takes_token_inputs_with_start_and_end_labels(tiny_preset):
    from conftest import token_batch

    model = _model(tiny_preset)
    model.compile()
    x = token_batch(batch=4, length=12)
    y = np.array([[3, 4], [0, 0], [5, 5], [2, 9]])
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and model.predict(x, verbose=0).shape == (4, 2, 12)
    with pytest.raises(ValueError, match=r"y \(start and end tokens\)\[7\] = 12 is outside \[0, 12\)"):
        model.fit(x, np.array([[3, 4], [0, 0], [5, 5], [2, 12]]), epochs=1, verbose=0)
