"""What the text signatures hand the model: each batch at its longest row's length."""

import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize_adapter_weights

import keras_adapters as ka
from keras_adapters import tasks
from keras_adapters.tasks.base import without_padding_columns
from keras_adapters.tasks.multi_label_classification import MULTI_LABEL_CLASSIFICATION

SHORT = ["the cup", "bank profits fell", "a new phone today"]


def _inputs(mask):
    mask = np.asarray(mask, "int32")
    ids = ((np.arange(mask.size).reshape(mask.shape) + 5) * mask).astype("int32")
    return {"token_ids": tf.constant(ids), "segment_ids": tf.constant(mask * 0), "padding_mask": tf.constant(mask)}


def test_only_columns_no_row_uses_are_cut():
    # A column inside a row's tokens stays even where that row masks it.
    inputs = _inputs([[1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0]])
    cut = without_padding_columns(inputs)
    for key, value in inputs.items():
        np.testing.assert_array_equal(cut[key], np.asarray(value)[:, :3])
    assert without_padding_columns(_inputs([[1, 1, 1]]))["token_ids"].shape == (1, 3)
    # No row uses any column: one column stays, an empty batch stays empty.
    assert without_padding_columns(_inputs([[0, 0, 0]]))["token_ids"].shape == (1, 1)
    assert without_padding_columns(_inputs(np.zeros((0, 4))))["token_ids"].shape == (0, 1)
    traced = tf.function(without_padding_columns, input_signature=[
        {k: tf.TensorSpec([None, None], tf.int32) for k in inputs}])
    np.testing.assert_array_equal(traced(inputs)["padding_mask"], np.asarray(inputs["padding_mask"])[:, :3])


def _classifier(preset, task):
    kwargs = {"pooling": "mean"} if task == tasks.PAIR_CLASSIFICATION else {}
    model = ka.AdapterTextClassifier.from_preset(preset, num_classes=3, method="houlsby", sequence_length=16,
                                                 task=task, class_names=["a", "b", "c"], **kwargs)
    randomize_adapter_weights(model.backbone, scale=0.5)
    kernel = model.heads["default"].logits.kernel  # away from ~0, so outputs differ by input
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype("float32"))
    return model


def _tagger(preset):
    model = ka.AdapterTextClassifier.from_preset(preset, num_classes=2, method="lora", sequence_length=16)
    model.add_adapter("ner", "houlsby", task=tasks.TOKEN_CLASSIFICATION, class_names=["O", "B-ORG", "I-ORG"])
    model.set_active_adapters("ner")
    randomize_adapter_weights(model.backbone, scale=0.5)
    kernel = model.heads["ner"].logits.kernel
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype("float32"))
    return model


def _answerer(preset):
    model = ka.AdapterQuestionAnswerer.from_preset(preset, method="houlsby", sequence_length=16)
    randomize_adapter_weights(model.backbone, scale=0.5)
    return model


MODELS = {tasks.TOKEN_CLASSIFICATION: _tagger, tasks.QUESTION_ANSWERING: _answerer}
#: Each task's texts: a short second text for pairs and question answering.
TEXTS = {tasks.PAIR_CLASSIFICATION: (SHORT, ["stocks rose", "the vote", "phones"]),
         tasks.QUESTION_ANSWERING: (["who won", "what fell", "which phone"],
                                    ["the team won", "shares fell", "a phone"])}


def _longest(model, texts):
    # [CLS] a [SEP] (b [SEP]): the tokenizer's pieces of each text, cut nowhere at these lengths.
    pieces = sum(np.array([len(x) for x in model.preprocessor.tokenizer(list(t))]) for t in texts)
    return int(max(pieces)) + 1 + len(texts)


def _spied(serving):
    """`serving` with its model recording the width of the tokens it is handed."""
    width, keras_model = tf.Variable(0), serving.model

    def spy(inputs, training=False):
        width.assign(tf.shape(inputs["token_ids"])[1])
        return keras_model(inputs, training=training)

    serving.model = spy
    return serving, width


@pytest.mark.parametrize("task", [tasks.TEXT_CLASSIFICATION, MULTI_LABEL_CLASSIFICATION,
                                  tasks.PAIR_CLASSIFICATION, tasks.TOKEN_CLASSIFICATION, tasks.QUESTION_ANSWERING])
def test_text_signatures_run_each_batch_at_its_longest_row(tiny_preset, task, monkeypatch):
    model = MODELS[task](tiny_preset) if task in MODELS else _classifier(tiny_preset, task)
    serving, width = _spied(tasks.get_task(task).serving(model, None))
    texts = TEXTS.get(task, (SHORT,))

    def serve():  # traced anew each time, as an export traces
        return tf.function(serving.serve_text, input_signature=serving.signature, autograph=False)(*texts)

    served = serve()
    assert int(width.numpy()) == _longest(model, texts) < 16
    # The same answers as at the whole sequence length.
    monkeypatch.setattr(sys.modules["keras_adapters.tasks.base"], "without_padding_columns", lambda inputs: inputs)
    whole = serve()
    assert int(width.numpy()) == 16
    assert set(served) == set(whole)
    for key, value in whole.items():
        value = value.to_tensor() if isinstance(value, tf.RaggedTensor) else value
        got = served[key].to_tensor() if isinstance(served[key], tf.RaggedTensor) else served[key]
        if value.dtype == tf.string:
            np.testing.assert_array_equal(got, value, err_msg=key)
        else:
            np.testing.assert_allclose(got, value, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("task", [tasks.TEXT_CLASSIFICATION, MULTI_LABEL_CLASSIFICATION, tasks.TOKEN_CLASSIFICATION])
def test_token_id_signatures_cut_padding_only_for_one_output_per_row(tiny_preset, task, monkeypatch):
    model = MODELS[task](tiny_preset) if task in MODELS else _classifier(tiny_preset, task)
    serving, width = _spied(tasks.get_task(task).serving(model, None))
    # As a client pads them: to the sequence length, padding masked.
    padded = {k: tf.cast(v, tf.int32) for k, v in model.preprocessor(SHORT).items()}
    longest = int(np.asarray(padded["padding_mask"]).sum(axis=1).max())

    def serve():
        return tf.function(serving.serve_token_ids, input_signature=serving.token_signature,
                           autograph=False)(*(padded[k] for k in ("token_ids", "segment_ids", "padding_mask")))

    served = serve()
    assert int(width.numpy()) == (16 if task == tasks.TOKEN_CLASSIFICATION else longest) and longest < 16
    monkeypatch.setattr(sys.modules["keras_adapters.tasks.base"], "without_padding_columns", lambda inputs: inputs)
    whole = serve()
    assert int(width.numpy()) == 16
    for key, value in whole.items():
        np.testing.assert_allclose(served[key], value, atol=1e-6, err_msg=key)
