"""The (task, method) learning-rate table: the model and `train` read it,
and a method's own default holds for the tasks it does not name."""

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
