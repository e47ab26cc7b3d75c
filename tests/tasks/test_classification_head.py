"""The classification head's `[CLS]`-token pooling and hidden layer (AdapterHub's head)."""

import keras
import numpy as np
import pytest
from conftest import TEXTS

import keras_adapters as ka
from keras_adapters.tasks.classification import ClassificationHead
from keras_adapters.tasks.classification import routed_probabilities


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _inputs(seed=0, batch=4, length=6, hidden=8):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), bool)
    mask[0, 3:] = False
    return rng.normal(size=(batch, length, hidden)).astype("float32"), rng.normal(size=(batch, hidden)).astype("float32"), mask


def _randomize(head, seed=1):
    rng = np.random.default_rng(seed)
    for w in head.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))


def test_cls_token_and_hidden_layer_compute_adapterhubs_head():
    sequence, pooled, mask = _inputs()
    head = ClassificationHead(3, pooling="cls_token", hidden_activation="tanh")
    head.build(8)
    _randomize(head)
    w = {k: v.numpy().astype("float64") for k, v in head.weights_by_key().items()}
    assert sorted(w) == ["hidden/bias", "hidden/kernel", "logits/bias", "logits/kernel"]
    hidden = np.tanh(sequence[:, 0] @ w["hidden/kernel"] + w["hidden/bias"])  # the [CLS] token, not `pooled`
    expected = _softmax(hidden @ w["logits/kernel"] + w["logits/bias"])
    np.testing.assert_allclose(head(sequence, pooled, mask).numpy(), expected, atol=1e-6)


def test_routing_keeps_each_rows_own_head_when_heads_differ():
    sequence, pooled, mask = _inputs(seed=2)
    heads = [ClassificationHead(2, pooling="cls", name="a"), ClassificationHead(3, pooling="cls_token",
                                                                               hidden_activation="tanh", name="b")]
    for i, head in enumerate(heads):
        head.build(8)
        _randomize(head, seed=10 + i)
    ids = np.array([1, 0, 1, 0], "int32")
    routed = routed_probabilities(heads, ids, sequence, pooled, mask).numpy()
    for row, index in enumerate(ids):
        alone = heads[index](sequence, pooled, mask).numpy()[row]
        np.testing.assert_allclose(routed[row, : len(alone)], alone, atol=1e-6)
        assert np.all(routed[row, len(alone):] == 0)


def test_the_hidden_layer_is_saved_with_the_adapter_and_the_keras_file(tiny_preset, tmp_path):
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, method="lora", sequence_length=16,
                                                 pooling="mean")
    model.add_adapter("hub", "pfeiffer", num_classes=4, pooling="cls_token", hidden_activation="tanh")
    for head in model.heads.values():
        _randomize(head, seed=4)
    model.set_active_adapters("hub")
    expected = model.predict(TEXTS, verbose=0)
    model.save_adapter(tmp_path / "a")
    again = ka.AdapterTextClassifier.from_adapter(tmp_path / "a")
    np.testing.assert_allclose(again.predict(TEXTS, verbose=0), expected, atol=1e-6)
    assert again.heads["hub"].task_config()["hidden_activation"] == "tanh"
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0), expected, atol=1e-6)
    assert "hidden_activation" not in model.heads["default"].task_config()  # plain heads' records are as before


def test_bad_head_options_are_refused():
    with pytest.raises(ValueError, match="pooling must be one of"):
        ClassificationHead(3, pooling="max")
    with pytest.raises(ValueError, match="tanhh"):
        ClassificationHead(3, hidden_activation="tanhh")
