"""The training precision that "auto" picks, from Python and the CLI."""

import pytest

import keras_adapters as ka
from keras_adapters.core import precision


def test_default_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: True)
    assert precision.default_precision() == "mixed_bfloat16"
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: False)
    assert precision.default_precision() == "float32"
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind: ["gpu"])
    assert precision.default_precision() == "mixed_float16"
    with pytest.raises(ValueError, match="precision must be"):
        precision.resolve_precision("float8")


@pytest.mark.parametrize("fast_bf16, policy", [(True, "mixed_bfloat16"), (False, "float32")])
def test_from_preset_auto_is_what_train_picks(tiny_preset, monkeypatch, fast_bf16, policy):
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: fast_bf16)
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, dtype="auto")
    assert model.backbone.dtype_policy.name == policy
    # Without it, Keras' global policy (float32 here), as every Keras model.
    plain = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2)
    assert plain.backbone.dtype_policy.name == "float32"


def test_question_answering_trains_in_float32_on_cpus(tiny_preset, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: True)
    qa, tagging = ka.tasks.get_task("question_answering"), ka.tasks.get_task("token-classification")
    assert precision.resolve_precision("auto", qa) == "float32"
    assert precision.resolve_precision("auto", tagging) == "mixed_bfloat16"  # no GPU here
    assert precision.resolve_precision("mixed_bfloat16", qa) == "mixed_bfloat16"  # asked for
    with pytest.raises(TypeError, match="takes a Task"):  # a name would silently pass as bf16-safe
        precision.resolve_precision("auto", "question_answering")
    model = ka.AdapterQuestionAnswerer.from_preset(tiny_preset, method="lora", sequence_length=16, dtype="auto")
    assert model.backbone.dtype_policy.name == "float32"
    tagger = ka.AdapterTokenClassifier.from_preset(tiny_preset, num_classes=2, sequence_length=16, dtype="auto")
    assert tagger.backbone.dtype_policy.name == "mixed_bfloat16"
