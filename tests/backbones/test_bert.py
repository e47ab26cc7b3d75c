"""BERT backbones compute the activation their checkpoint was trained with."""

import json
import os

import keras
import numpy as np
import pytest
from bert_reference import NumpyBert
from conftest import token_batch
from conftest import randomize_adapter_weights
from conftest import tiny_backbone

import keras_adapters as ka
from keras_adapters.io import presets

SENTENCES = ["The striker scored twice as the home side won the cup final.", "Shares fell 4%."]


def _with_hidden_act(minilm_preset, folder, hidden_act):
    """The MiniLM checkpoint with another `hidden_act` in its config.json."""
    os.makedirs(folder)
    for name in os.listdir(minilm_preset):
        if name != "config.json":
            os.symlink(os.path.join(minilm_preset, name), os.path.join(folder, name))
    with open(os.path.join(minilm_preset, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config, "hidden_act": hidden_act}, f)
    return str(folder)


@pytest.fixture(scope="module")
def tokens(minilm_preset):
    preprocessor = presets.load_preprocessor(minilm_preset, sequence_length=24)
    return {k: np.asarray(v) for k, v in preprocessor(SENTENCES).items()}


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_the_checkpoints_hidden_act_is_computed(minilm_preset, tokens, tmp_path, hidden_act):
    """keras-hub's own BertBackbone computes tanh GELU whatever the checkpoint says:
    3e-3 away from the float64 reference on MiniLM (whose config says exact "gelu")."""
    folder = _with_hidden_act(minilm_preset, tmp_path / hidden_act, hidden_act)
    backbone = presets.load_backbone(folder)
    got = backbone(tokens)["sequence_output"].numpy()[tokens["padding_mask"]]
    reference = NumpyBert(folder)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"])
    np.testing.assert_allclose(got, reference[tokens["padding_mask"]], atol=1e-5)
    assert isinstance(backbone, ka.BertBackbone)


def test_an_unknown_hidden_act_is_refused(minilm_preset, tmp_path):
    folder = _with_hidden_act(minilm_preset, tmp_path / "quick", "quick_gelu")
    with pytest.raises(presets.PresetNotFoundError, match="hidden_act 'quick_gelu' is not supported"):
        presets.load_backbone(folder)


def test_an_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="Unknown BERT feed-forward activation 'tanh'.*gelu_approximate"):
        tiny_backbone(activation="tanh")


def _unit_scale_kernels(backbone, seed=0):
    """Kernels of std 1/sqrt(fan_in), so feed-forward pre-activations are O(1): with
    BERT's 0.02 init a tiny model's are ~1e-2, where tanh and exact GELU agree to 1e-7."""
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        if weight.path.endswith("kernel") and len(weight.shape) == 2:
            weight.assign(rng.standard_normal(weight.shape).astype("float32") / np.sqrt(weight.shape[0]))


@pytest.mark.parametrize("activation", ["relu", "gelu_approximate"])
def test_the_activation_survives_config_and_keras_file_round_trips(tmp_path, activation):
    backbone = tiny_backbone(activation=activation)
    _unit_scale_kernels(backbone)
    batch = token_batch()
    expected = backbone(batch)["sequence_output"].numpy()
    exact = ka.BertBackbone.from_config({**backbone.get_config(), "activation": "gelu"})
    exact.set_weights(backbone.get_weights())
    assert np.abs(exact(batch)["sequence_output"].numpy() - expected).max() > 1e-5  # the check can fail

    again = ka.BertBackbone.from_config(backbone.get_config())
    again.set_weights(backbone.get_weights())
    np.testing.assert_array_equal(again(batch)["sequence_output"].numpy(), expected)
    backbone.save(tmp_path / "b.keras")
    loaded = keras.saving.load_model(tmp_path / "b.keras")
    assert loaded.activation == activation
    np.testing.assert_array_equal(loaded(batch)["sequence_output"].numpy(), expected)


@pytest.mark.slow  # 9 s: two MiniLM models
def test_an_adapter_saved_before_the_exact_gelu_is_rebuilt_as_it_was_trained(minilm_preset, tmp_path):
    """keras-adapters 0.17 trained on keras-hub's tanh GELU and recorded no activation."""
    old = ka.AdapterTextClassifier.from_preset(
        minilm_preset, num_classes=3, method="lora", sequence_length=24, activation="gelu_approximate"
    )
    randomize_adapter_weights(old.backbone, scale=0.3)
    expected = old.predict(SENTENCES, verbose=0)
    old.save_adapter(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(path.read_text())
    del config["backbone"]["architecture"]["activation"]
    path.write_text(json.dumps(config))

    again = ka.AdapterTextClassifier.from_adapter(tmp_path / "a")
    assert again.backbone.activation == "gelu_approximate"
    np.testing.assert_allclose(again.predict(SENTENCES, verbose=0), expected, atol=1e-6)

    exact = ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=24)
    with pytest.warns(UserWarning, match="as 'gelu_approximate'.*computes 'gelu'"):
        exact.set_active_adapters(exact.load_adapter(tmp_path / "a"))
    assert 1e-6 < np.abs(exact.predict(SENTENCES, verbose=0) - expected).max() < 1e-2
