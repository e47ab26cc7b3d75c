"""The (task, method) learning-rate table: the model and `train` read it,
and a method's own default holds for the tasks it does not name."""

import warnings

import pytest

import keras_adapters as ka
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.tasks import defaults


def test_the_table_overrides_the_methods_default_only_for_its_tasks(tiny_preset):
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, method="houlsby", sequence_length=8)
    assert model.default_learning_rate == get_adapter_config("houlsby").default_learning_rate == 1e-3
    model.add_adapter("reader", "houlsby", task="question_answering")
    model.train_adapter("reader")
    assert model.default_learning_rate == defaults.LEARNING_RATES[("question_answering", "houlsby")] == 3e-3
    tagger = ka.AdapterTokenClassifier.from_preset(
        tiny_preset, num_classes=3, class_names=["O", "B-X", "I-X"], method="full", sequence_length=8
    )
    assert tagger.default_learning_rate == 1e-4 != get_adapter_config("full").default_learning_rate
    classifier = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, method="full", sequence_length=8)
    assert classifier.default_learning_rate == get_adapter_config("full").default_learning_rate


def test_every_entry_names_a_registered_task_and_method():
    for (task, method), rate in defaults.LEARNING_RATES.items():
        assert task in ka.tasks.available_tasks()
        get_adapter_config(method)  # raises for an unknown method
        assert 0 < rate < 1


def test_choosing_a_method_that_falls_short_on_a_task_warns_with_its_numbers(tmp_path, tiny_preset):
    from conftest import write_conll

    path = write_conll(tmp_path / "x.conll", count=16)
    options = dict(preset=tiny_preset, epochs=1, batch_size=8, sequence_length=16, validation_split=0.0,
                   precision="float32", tensorboard=False, verbose=0)
    with pytest.warns(UserWarning, match=r"--method pfeiffer: on WNUT-16 tagging Pfeiffer adapters score entity F1"):
        ka.train_classifier(path, tmp_path / "pfeiffer", method="pfeiffer", **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ka.train_classifier(path, tmp_path / "houlsby", method="houlsby", **options)
    assert not [w for w in caught if str(w.message).startswith("--method")]
    for (task, method), text in defaults.SHORTFALLS.items():
        assert "BENCHMARKS.md" in text and defaults.shortfall(task, method) == text
