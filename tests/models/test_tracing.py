"""`fit` traces the training step once: the optimizer and metrics exist before it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LABELS
from conftest import TEXTS

import keras_adapters as ka
from keras_adapters.core.privacy import DPConfig
from keras_adapters.models import tracing


def _counting(model, name):
    """Count the Python calls of `model.<name>` (one per trace of the step)."""
    calls, step = [], getattr(model, name)

    def counted(data):
        calls.append(1)
        return step(data)

    setattr(model, name, counted)
    return calls


def _model(tiny_preset, privacy=None):
    keras.utils.set_random_seed(0)
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    model.compile(privacy=privacy)
    return model


@pytest.mark.parametrize("privacy", [
    None,
    # (over 10 s on 2 cores: CI runs it with the slow tests)
    pytest.param(DPConfig(noise_multiplier=1.0, delta=1e-3), marks=pytest.mark.slow),
], ids=["plain", "private"])
def test_fit_and_evaluate_trace_their_step_once(tiny_preset, privacy):
    model = _model(tiny_preset, privacy)
    trained, tested = _counting(model, "train_step"), _counting(model, "test_step")
    texts, labels = TEXTS * 2, np.tile(LABELS, 2)
    model.fit(texts, labels, batch_size=4, epochs=2, verbose=0)
    # Keras alone (TensorFlow, no strategy) creates the optimizer's slots and the
    # metrics' variables inside the first trace, and tf.function then traces again.
    assert len(trained) == 1
    model.evaluate(texts, labels, batch_size=4, verbose=0)
    assert len(tested) == 1


@pytest.mark.slow  # two fits, over 10 s on 2 cores
def test_building_reads_the_datas_structure_not_a_batch(tiny_preset):
    """The batches trained on are Keras' own: drawing one to build from
    would move a reshuffled dataset on to another order."""
    runs = []
    for keras_alone in (False, True):
        keras.utils.set_random_seed(0)  # the shuffle's global seed, whichever test ran before
        data = tf.data.Dataset.from_tensor_slices((TEXTS * 2, np.tile(LABELS, 2)))
        data = data.shuffle(64, seed=1, reshuffle_each_iteration=True).batch(4)
        model = _model(tiny_preset)
        if keras_alone:  # Keras without a strategy: build inside the first trace
            model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
        model.fit(data, epochs=1, verbose=0)
        runs.append([w.numpy() for w in model.trainable_variables])
    for ours, keras_alone in zip(*runs):
        np.testing.assert_allclose(ours, keras_alone, rtol=1e-6, atol=1e-7)


def test_data_without_a_known_structure_is_built_by_keras_in_the_first_trace():
    """A spec of unknown rank (a `tf.py_function` without `set_shape`) or
    Python lists cannot be built from: they are left to Keras, as before."""
    assert tracing._shaped((tf.TensorSpec([None, 16], tf.int32), tf.TensorSpec([None], tf.int64), None))
    assert tracing._shaped({"token_ids": np.zeros([2, 16], "int32")})
    assert not tracing._shaped((tf.TensorSpec(None, tf.int32), tf.TensorSpec([None], tf.int64)))
    assert not tracing._shaped((["a text"], [1]))
    assert not tracing._shaped(None)
